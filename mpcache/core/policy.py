"""The policy interface: what a KV-cache policy may do inside the generation loop.

A policy is a small dataclass; one instance serves ONE sequence (make a fresh one per prompt: it
may keep cross-layer state). The transformer calls three hooks, per layer, in layer order:

- ``after_prefill(layer, prompt, cache, backend)`` once, after the prompt's K/V are cached and the
  prompt's attention is done. ``prompt`` (:class:`PromptInfo`) carries the prompt queries and the
  attention each prompt token received. Static eviction happens here (replace ``cache.k/v``).
- ``decode_kv(layer, q, cache, backend) -> (keys, values)`` at every decode step, after the new
  token's K/V were appended to ``cache``: the [Hkv, n, d] keys/values this step attends to
  (a subset/gather for dynamic selection, or the whole cache after evicting from it).
- ``observe(layer, probs, cache, backend)`` after the decode step's softmax, with the attention
  probabilities [Hkv, group, n] over exactly the keys ``decode_kv`` returned (score keeping, H2O).

Rules: policies never branch on the backend and touch secret values (cache, queries, probs) only
through Backend ops (``topk`` -> a selection, ``gather``, ``matmul``, ``sum``, ``amax``/``amin``,
``cat``, slicing/reshape, + and * with public constants). Counts and shapes must be public: they
may depend on lengths and the budget, never on values. ``budget`` is the fraction of the prompt's
T tokens attended per decode step (``budget_tokens``); each policy documents its always-kept
extras. ``cache.state`` is the policy's per-layer scratch space; ``cache.nbytes`` counts K/V only,
so a policy holding other big tensors (quantized tiers) should override ``extra_nbytes``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

from mpcache.core.backend import Backend, Tensor
from mpcache.core.cache import LayerCache
from mpcache.core.errors import UserError
from mpcache.core.window import window_attention

BACKENDS = ("plain", "mpc")  # PlainBackend.name, MPCBackend.name


@dataclass
class PromptInfo:
    """What the prefill leaves for the policies, per layer (backend tensors).

    ``q``: the prompt's queries after RoPE, [num_heads, T, head_dim].
    ``attn_colsum``: attention received by each prompt token, summed over all prompt queries and
    the query heads of each KV head's group, [num_kv_heads, T] (H2O's accumulated score).
    ``num_layers``: the model's layer count (for cross-layer patterns).
    ``config``: the model's ModelConfig (RoPE, shapes), for policies that need them (trained scorers).
    """

    q: Tensor
    attn_colsum: Tensor
    num_layers: int
    probs: Tensor | None = None  # [Hkv, g, R, T]: prefill's attention of the last R prompt queries
    config: Any = None

    def window_probs(self, window: int, keys: Tensor, backend: Backend) -> Tensor:
        """Attention of the last ``window`` prompt queries [Hkv, g, W, T]: the rows prefill computed
        anyway when it kept them (``Policy.prompt_rows``), else recomputed (a second softmax).
        A chat turn's chunk (fewer queries than the window; the earlier ones are gone) gives the
        rows of all its queries."""
        if self.probs is not None and self.probs.shape[2] >= min(window, self.q.shape[1]):
            return self.probs[:, :, max(0, self.probs.shape[2] - window) :]
        return window_attention(self.q, keys, window, backend)


@dataclass(frozen=True)
class Policy:
    """Base policy: keep and attend everything (the full cache)."""

    budget: float = 1.0

    name = "full"
    # The backends this policy runs on, and why not the others (shown when a run is refused).
    backends: ClassVar[tuple[str, ...]] = BACKENDS
    plaintext_only_because: ClassVar[str] = ""

    @classmethod
    def check_backend(cls, backend: str) -> None:
        """Refuse, with one line, a run of this policy on a backend it does not support."""
        if backend not in cls.backends:
            raise UserError(f"policy {cls.name!r} runs on the {'/'.join(cls.backends)} backend only "
                            f"({cls.plaintext_only_because}), not on {backend!r}")

    def budget_tokens(self, prompt_len: int) -> int:
        """Tokens attended per decode step for a prompt of ``prompt_len`` tokens (public).

        ``budget >= 1`` means no limit at all (the full cache, generated tokens included)."""
        if self.budget >= 1.0:
            return sys.maxsize
        return max(1, min(prompt_len, math.ceil(self.budget * prompt_len - 1e-9)))

    def prompt_rows(self, prompt_len: int) -> int:
        """How many of the prompt's last query rows of attention ``after_prefill`` reads (kept by
        the prefill in ``PromptInfo.probs`` instead of being recomputed)."""
        return 0

    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        """Called once per layer after the prompt's keys/values are cached. May evict."""

    def decode_kv(
        self, layer: int, q: Tensor, cache: LayerCache, backend: Backend
    ) -> tuple[Tensor, Tensor]:
        """Keys and values the decode query ``q`` [num_heads, 1, d] attends to, each [Hkv, n, d]."""
        return cache.k, cache.v

    def decode_attention(
        self, layer: int, q: Tensor, cache: LayerCache, backend: Backend
    ) -> tuple[Tensor, int] | None:
        """Optional: attend this decode step itself -> (output [Hkv, group, d], keys attended).

        For caches the transformer cannot attend over as plain K/V (MiKV's packed low tier: one
        softmax over both tiers in a fused kernel). ``None`` (the default) means: use ``decode_kv``
        and ``observe``; when a policy returns an output, those two are not called this step."""
        return None

    def observe(self, layer: int, probs: Tensor, cache: LayerCache, backend: Backend) -> None:
        """Attention probabilities of this decode step, [Hkv, group, n] over ``decode_kv``'s keys."""

    def extra_nbytes(self, cache: LayerCache) -> int:
        """Bytes this policy holds for the layer besides ``cache.k/v`` (counted into kv_bytes)."""
        return 0

    def record_extras(self, config) -> dict:
        """Fields for the eval record (trained policies: ``extra_params``, ``train_seconds``)."""
        return {}
