"""Quest-style query-aware page selection: no eviction, a fresh choice of pages every decode step.

Keys are cut into pages of ``page`` tokens; each full page keeps its per-channel key max/min
(computed once, when it fills). The upper bound of q.k over a page is
sum_c max(q_c*max_c, q_c*min_c) = q+ . max + q- . min, summed over the query heads of the KV
head's group. The top pages plus the newest, partial page are attended:
floor((budget_tokens(T) - partial) / page) pages (at least one), so a step attends at most the
budget (up to ``page`` - 1 fewer).
"""

from __future__ import annotations

from dataclasses import dataclass

from mpcache.core.backend import Backend, Tensor
from mpcache.core.cache import LayerCache
from mpcache.core.policy import Policy, PromptInfo
from mpcache.policies.clusters import ClusterBounds, gather_clusters, top


@dataclass(frozen=True)
class QuestPolicy(Policy):
    page: int = 16

    name = "quest"

    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        cache.state["n_budget"] = self.budget_tokens(cache.length)
        cache.state["bounds"] = ClusterBounds(self.page)
        cache.state["bounds"].update(cache.k, backend)

    def decode_kv(self, layer: int, q: Tensor, cache: LayerCache, backend: Backend) -> tuple[Tensor, Tensor]:
        n, n_budget = cache.length, cache.state["n_budget"]
        bounds: ClusterBounds = cache.state["bounds"]
        pages = bounds.update(cache.k, backend)
        if n <= n_budget or pages == 0:
            return cache.k, cache.v
        full = pages * self.page
        k = min(pages, max(1, (n_budget - (n - full)) // self.page))
        hkv, _, d = cache.k.shape
        g = q.shape[0] // hkv
        qg = q.reshape(hkv, g, 1, d)
        # sum_c max(q_c max_c, q_c min_c) = q+ . max + q- . min  (q+ = max(q, 0), q- = q - q+): one
        # comparison per query channel, then two products with the (fixed) page bounds.
        q_pos = backend.amax(backend.cat([qg, qg * 0.0], dim=2), 2)  # [Hkv, g, d]
        q_neg = qg.reshape(hkv, g, d) - q_pos
        upper = backend.matmul_t(q_pos, bounds.kmax) + backend.matmul_t(q_neg, bounds.kmin)  # [Hkv, g, P]
        scores = backend.sum(upper, 1)  # [Hkv, P]
        sel = top(backend, scores, k)
        keys, values = (gather_clusters(backend, sel, x, pages, self.page, k) for x in (cache.k, cache.v))
        return keys, values

    def extra_nbytes(self, cache: LayerCache) -> int:
        return cache.state["bounds"].nbytes() if "bounds" in cache.state else 0
