"""SnapKV: look once at the prompt from its last ``window`` queries, keep the most-voted tokens.

Per KV head: votes = attention from the observation window (summed over window rows and the query
heads of the group), smoothed by an average pool of ``kernel`` tokens; keep the window plus the top
prefix tokens, ``budget_tokens(T)`` in all. Generated tokens are appended and always attended (the
documented extra: at most the number of new tokens). Backend ops only (the pool is a sum of
shifted slices).
"""

from __future__ import annotations

from dataclasses import dataclass

from mpcache.core.backend import Backend
from mpcache.core.cache import LayerCache
from mpcache.core.policy import Policy, PromptInfo
from mpcache.policies.static import choose, evict


@dataclass(frozen=True)
class SnapKVPolicy(Policy):
    window: int = 32
    kernel: int = 7

    name = "snapkv"

    def _window(self, t: int) -> int:
        return min(self.window, self.budget_tokens(t) - 1, t - 1)

    def prompt_rows(self, prompt_len: int) -> int:
        return max(0, self._window(prompt_len)) if self.budget_tokens(prompt_len) < prompt_len else 0

    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        t = cache.length
        n_budget = self.budget_tokens(t)
        window = self._window(t)
        if n_budget >= t or window < 1:
            return
        probs = prompt.window_probs(window, cache.k, backend)  # [Hkv, g, W, T], from the prefill
        votes = backend.sum(backend.sum(probs, 1), 1)[:, : t - window]  # [Hkv, T - W]
        votes = _avg_pool(votes, self.kernel, backend)
        evict(cache, choose(votes, n_budget - window, backend), backend)


def _avg_pool(x, kernel: int, backend: Backend):
    """1-D average pool over the last dim, same length, zero padding (like avg_pool1d with padding)."""
    if kernel <= 1:
        return x
    pad = kernel // 2
    zeros = x[:, :1] * 0.0
    padded = backend.cat([zeros] * pad + [x] + [zeros] * (kernel - 1 - pad), dim=1)
    n = x.shape[1]
    total = padded[:, 0:n]
    for j in range(1, kernel):
        total = total + padded[:, j : j + n]
    return total * (1.0 / kernel)
