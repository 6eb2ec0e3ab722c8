"""The policy interface: what a KV-cache policy may do inside the generation loop.

A policy never branches on the backend: it uses Backend ops only, so the same policy object runs
in plaintext and under MPC. Hooks are per layer and called by the transformer.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpcache.backend import Backend, Tensor
from mpcache.cache import LayerCache


@dataclass
class Policy:
    """Base policy: keep and attend everything (the full cache)."""

    name = "full"

    def after_prefill(self, layer: int, q: Tensor, cache: LayerCache, backend: Backend) -> None:
        """Called once per layer after the prompt's keys/values are cached. May evict.

        ``q`` holds the prompt's queries after RoPE, [num_heads, T, head_dim].
        """

    def decode_kv(
        self, layer: int, q: Tensor, cache: LayerCache, backend: Backend
    ) -> tuple[Tensor, Tensor]:
        """Keys and values the decode query ``q`` [num_heads, 1, d] attends to, each [Hkv, n, d]."""
        return cache.k, cache.v

    def observe(self, layer: int, probs: Tensor, cache: LayerCache, backend: Backend) -> None:
        """Attention probabilities of the last step, [Hkv, group*T, n] (for score-keeping policies)."""
