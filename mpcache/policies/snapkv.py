"""SnapKV: look once at the prompt from its last ``window`` queries, keep the most-voted tokens.

Per KV head: votes = attention from the observation window (summed over window rows and the query
heads of the group), smoothed by an average pool of ``kernel`` tokens; keep the window plus the top
prefix tokens, ``budget_tokens(T)`` in all. Generated tokens are appended and always attended (the
documented extra: at most the number of new tokens). Backend ops only (the pool is a sum of
shifted slices).
"""

from __future__ import annotations

from dataclasses import dataclass

from mpcache.backend import Backend
from mpcache.cache import LayerCache
from mpcache.policies.base import Policy, PromptInfo
from mpcache.policies.window import window_attention


@dataclass
class SnapKVPolicy(Policy):
    window: int = 32
    kernel: int = 7

    name = "snapkv"

    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        t = cache.length
        n_budget = self.budget_tokens(t)
        window = min(self.window, n_budget - 1, t - 1)
        if n_budget >= t or window < 1:
            return
        probs = window_attention(prompt.q, cache.k, window, backend)  # [Hkv, g, W, T]
        votes = backend.sum(backend.sum(probs, 1), 1)[:, : t - window]  # [Hkv, T - W]
        votes = _avg_pool(votes, self.kernel, backend)
        sel = backend.topk(votes, n_budget - window)
        k_old, v_old = cache.k[:, : t - window], cache.v[:, : t - window]
        cache.k = backend.cat([backend.gather(sel, k_old), cache.k[:, t - window :]], dim=1)
        cache.v = backend.cat([backend.gather(sel, v_old), cache.v[:, t - window :]], dim=1)


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
