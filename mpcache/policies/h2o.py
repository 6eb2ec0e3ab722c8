"""H2O: heavy hitters (largest accumulated attention) plus a recent window, per KV head.

The cache holds exactly ``budget_tokens(T)`` keys per KV head: ``recent_ratio`` of them are the
newest tokens, the rest the heavy hitters among the older ones. Scores start from the attention each
prompt token received during prefill (summed over queries and the query heads of the group) and
accumulate every decode step. Eviction happens before attending, so every decode step attends
exactly the budget. Backend ops only: once after prefill a top-k over the (secret) scores and a
gather of K/V/scores; then per decode step one argmin and an order-keeping shift (one token leaves).
"""

from __future__ import annotations

from dataclasses import dataclass

from mpcache.core.backend import Backend, Tensor
from mpcache.core.cache import LayerCache
from mpcache.core.policy import Policy, PromptInfo
from mpcache.policies.static import choose, compact, evict


@dataclass(frozen=True)
class H2OPolicy(Policy):
    recent_ratio: float = 0.5

    name = "h2o"

    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        n_budget = self.budget_tokens(cache.length)
        cache.state["n_budget"] = n_budget
        cache.state["scores"] = prompt.attn_colsum  # [Hkv, T]
        n = cache.length
        if n <= n_budget:
            return
        # Once, after prefill: the heavy hitters among the older tokens, plus the recent window.
        scores = cache.state["scores"]
        choice = choose(scores[:, : n - self._recent(n_budget)], self._heavy(n_budget), backend)
        evict(cache, choice, backend)
        cache.state["scores"] = compact(scores[..., None], choice, backend, fix=False)[..., 0]

    def decode_kv(self, layer: int, q: Tensor, cache: LayerCache, backend: Backend) -> tuple[Tensor, Tensor]:
        scores = cache.state["scores"]
        if cache.length > scores.shape[1]:  # token(s) appended since: no attention received yet
            zeros = cache.k[:, scores.shape[1] :, 0] * 0.0
            scores = backend.cat([scores, zeros], dim=1)
        n_budget = cache.state["n_budget"]
        while cache.length > n_budget:
            # One token left the recent window: evict the lightest of the older ones (an argmin
            # and an order-keeping shift; the shifted cache is masked again, once).
            old = cache.length - self._recent(n_budget)
            drop = backend.argmin(scores[:, :old])
            k, v, s3 = (backend.cat([backend.drop(drop, x[:, :old]), x[:, old:]], dim=1)
                        for x in (cache.k, cache.v, scores[..., None]))
            cache.k, cache.v, scores = backend.fix(k), backend.fix(v), s3[..., 0]
        cache.state["scores"] = scores
        return cache.k, cache.v

    def observe(self, layer: int, probs: Tensor, cache: LayerCache, backend: Backend) -> None:
        cache.state["scores"] = cache.state["scores"] + backend.sum(probs, 1)

    def _recent(self, n_budget: int) -> int:
        return min(n_budget, max(1, round(self.recent_ratio * n_budget)))

    def _heavy(self, n_budget: int) -> int:
        return n_budget - self._recent(n_budget)
