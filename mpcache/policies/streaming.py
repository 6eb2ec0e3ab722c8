"""StreamingLLM: attend the first ``sink`` tokens (attention sinks) plus the most recent ones.

Exactly ``budget_tokens(T)`` keys per decode step once the cache is longer than that; the cache
itself is trimmed to them (evicted tokens are gone). Positions are public: plain slicing.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpcache.core.backend import Backend, Tensor
from mpcache.core.cache import LayerCache
from mpcache.core.policy import Policy, PromptInfo


@dataclass(frozen=True)
class StreamingPolicy(Policy):
    sink: int = 4

    name = "streaming"

    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        cache.state["n_budget"] = self.budget_tokens(cache.length)
        self._trim(cache, backend)

    def decode_kv(self, layer: int, q: Tensor, cache: LayerCache, backend: Backend) -> tuple[Tensor, Tensor]:
        self._trim(cache, backend)
        return cache.k, cache.v

    def _trim(self, cache: LayerCache, backend: Backend) -> None:
        n_budget = cache.state["n_budget"]
        if cache.length <= n_budget:
            return
        sink = min(self.sink, n_budget - 1)
        recent = n_budget - sink
        start = cache.length - recent
        cache.k = backend.cat([cache.k[:, :sink], cache.k[:, start:]], dim=1)
        cache.v = backend.cat([cache.v[:, :sink], cache.v[:, start:]], dim=1)
