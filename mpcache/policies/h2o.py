"""H2O: heavy hitters (largest accumulated attention) plus a recent window, per KV head.

The cache holds exactly ``budget_tokens(T)`` keys per KV head: ``recent_ratio`` of them are the
newest tokens, the rest the heavy hitters among the older ones. Scores start from the attention each
prompt token received during prefill (summed over queries and the query heads of the group) and
accumulate every decode step. Eviction happens before attending, so every decode step attends
exactly the budget. Backend ops only: top-k over the (secret) scores, gather of K/V/scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpcache.backend import Backend, Tensor
from mpcache.cache import LayerCache
from mpcache.policies.base import Policy, PromptInfo


@dataclass
class H2OPolicy(Policy):
    recent_ratio: float = 0.5

    name = "h2o"

    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        cache.state["n_budget"] = self.budget_tokens(cache.length)
        cache.state["scores"] = prompt.attn_colsum  # [Hkv, T]
        self._evict(cache, backend)

    def decode_kv(self, layer: int, q: Tensor, cache: LayerCache, backend: Backend) -> tuple[Tensor, Tensor]:
        scores = cache.state["scores"]
        if cache.length > scores.shape[1]:  # token(s) appended since: no attention received yet
            zeros = cache.k[:, scores.shape[1] :, 0] * 0.0
            cache.state["scores"] = backend.cat([scores, zeros], dim=1)
        self._evict(cache, backend)
        return cache.k, cache.v

    def observe(self, layer: int, probs: Tensor, cache: LayerCache, backend: Backend) -> None:
        cache.state["scores"] = cache.state["scores"] + backend.sum(probs, 1)

    def _evict(self, cache: LayerCache, backend: Backend) -> None:
        n, n_budget = cache.length, cache.state["n_budget"]
        if n <= n_budget:
            return
        recent = min(n_budget, max(1, round(self.recent_ratio * n_budget)))
        heavy = n_budget - recent
        old = n - recent
        parts_k, parts_v, parts_s = [], [], []
        scores = cache.state["scores"]
        if heavy:
            sel = backend.topk(scores[:, :old], heavy)
            parts_k.append(backend.gather(sel, cache.k[:, :old]))
            parts_v.append(backend.gather(sel, cache.v[:, :old]))
            parts_s.append(backend.gather(sel, scores[:, :old, None])[..., 0])
        parts_k.append(cache.k[:, old:])
        parts_v.append(cache.v[:, old:])
        parts_s.append(scores[:, old:])
        cache.k, cache.v = backend.cat(parts_k, dim=1), backend.cat(parts_v, dim=1)
        cache.state["scores"] = backend.cat(parts_s, dim=1)
