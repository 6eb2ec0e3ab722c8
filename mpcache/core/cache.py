"""Our own KV cache: per layer, keys and values after RoPE, plus whatever state a policy keeps.

Keys and values are stored [num_kv_heads, tokens, head_dim] (backend tensors: secret under MPC).
RoPE is applied before caching, so evicting tokens never needs their positions again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mpcache.core.backend import Backend, Tensor


@dataclass
class LayerCache:
    k: Tensor | None = None
    v: Tensor | None = None
    appended: int = 0  # tokens ever appended (prompt + generated), evicted ones included
    state: dict[str, Any] = field(default_factory=dict)  # owned by the policy
    # The policy's state across the layers of this sequence: one dict shared by all its LayerCaches
    # (e.g. the selection a leader layer passes to its follower). The policy object itself is a
    # frozen spec that holds no per-sequence state.
    sequence: dict[str, Any] = field(default_factory=dict)
    attended: int = 0  # keys attended over all decode steps (counted by the transformer)
    decode_steps: int = 0

    @property
    def length(self) -> int:
        """Tokens currently held."""
        return 0 if self.k is None else self.k.shape[1]

    def append(self, k: Tensor, v: Tensor, backend: Backend) -> None:
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = backend.cat([self.k, k], dim=1)
            self.v = backend.cat([self.v, v], dim=1)
        self.appended += k.shape[1]


@dataclass
class KVCache:
    """One sequence's cache and the policy that manages it (a policy instance serves one sequence)."""

    layers: list[LayerCache]
    policy: Any = None  # mpcache.policies.Policy; None: the full cache

    @classmethod
    def empty(cls, num_layers: int, policy: Any = None) -> KVCache:
        sequence: dict[str, Any] = {}
        return cls([LayerCache(sequence=sequence) for _ in range(num_layers)], policy)

    @property
    def position(self) -> int:
        """Position of the next token to be fed."""
        return self.layers[0].appended

    def fork(self) -> KVCache:
        """A copy sharing the K/V tensors (safe: cache updates build new tensors, never write in place)
        with empty policy state and counters: run several policies from one prefill."""
        sequence: dict[str, Any] = {}
        return KVCache([LayerCache(lc.k, lc.v, lc.appended, sequence=sequence) for lc in self.layers])

    def start(self, policy: Any, prompts: list, backend: Backend) -> KVCache:
        """A fork of this full-cache prefill handed to ``policy``: its ``after_prefill`` runs now on
        each layer with that layer's recorded prompt info (run several policies from one prefill)."""
        policy.check_backend(backend.name)
        cache = self.fork()
        cache.policy = policy
        with backend.phase("static-eviction"):
            for i, prompt in enumerate(prompts):
                policy.after_prefill(i, prompt, cache.layers[i], backend)
        return cache

    def mean_attended(self) -> float:
        """Mean keys attended per layer per decode step (0 before any decode step)."""
        steps = sum(lc.decode_steps for lc in self.layers)
        return sum(lc.attended for lc in self.layers) / steps if steps else 0.0

    def nbytes(self) -> int:
        """Bytes the cached plaintext tensors hold (keys and values; policy state excluded)."""
        total = 0
        for layer in self.layers:
            for t in (layer.k, layer.v):
                if t is not None and hasattr(t, "element_size"):
                    total += t.numel() * t.element_size()
        return total
