"""Shared by the policy tests: run a policy and record how many keys layer 0 attends per step."""

from __future__ import annotations

from mpcache.core.backend import PlainBackend
from mpcache.generation.generate import GenerationResult, generate
from mpcache.models import Transformer


def attended_per_step(loaded, policy, ids, steps, backend=None) -> tuple[list[int], GenerationResult]:
    """(keys attended by layer 0 at each decode step, the generation result)."""
    seen = []
    inner = policy.decode_kv

    def spy(layer, q, cache, b):
        k, v = inner(layer, q, cache, b)
        if layer == 0:
            seen.append(k.shape[1])
        return k, v

    object.__setattr__(policy, "decode_kv", spy)  # the spec is frozen: a spy on this instance only
    model = Transformer(loaded.config, loaded.weights, backend or PlainBackend(), policy)
    return seen, generate(model, ids, steps + 1)
