"""A full-cache prefill that records what the policies read from the prompt, so that several
policies (an eval sweep, a trained scorer's features, the MPC path's plaintext prefill) start from
one forward pass of the prompt."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mpcache.core.backend import Backend
from mpcache.core.cache import KVCache, LayerCache
from mpcache.core.policy import Policy, PromptInfo
from mpcache.models.transformer import Transformer

ROWS_BUDGET = 1 << 29  # bytes of prefill attention rows a recorded prefill keeps (all layers)


class _Recorder(Policy):
    """Full cache during prefill; keeps what the policies get from the prompt (with the window rows
    of attention the most demanding of ``policies`` reads)."""

    def __init__(self, policies: Sequence[Policy] = (), rows_budget_bytes: int | None = ROWS_BUDGET) -> None:
        super().__init__()
        self.policies = list(policies)
        self.rows_budget = rows_budget_bytes
        self.prompts: list[PromptInfo] = []

    def prompt_rows(self, prompt_len: int) -> int:
        return max((p.prompt_rows(prompt_len) for p in self.policies), default=0)

    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        if prompt.probs is not None and self.rows_budget is not None:
            size = prompt.probs.numel() * prompt.probs.element_size() * prompt.num_layers
            if size > self.rows_budget:  # too big to hold for every layer: recomputed when needed
                prompt = PromptInfo(prompt.q, prompt.attn_colsum, prompt.num_layers, config=prompt.config)
        self.prompts.append(prompt)


@dataclass
class Prefilled:
    cache: KVCache
    prompts: list[PromptInfo]
    logits: torch.Tensor  # last prompt token's logits (policy-independent)
    seconds: float
    ids: list[int] = field(default_factory=list)  # the prompt (for policies that prefill themselves)


def prefill(model: Transformer, ids: list[int], policies: Sequence[Policy] = (),
            rows_budget_bytes: int | None = ROWS_BUDGET) -> Prefilled:
    """Full-cache prefill that records each layer's prompt info for ``policies`` (fresh instances
    of the policies that will run from it): the window rows of attention they read, unless all
    layers' rows exceed ``rows_budget_bytes`` (then they are recomputed when needed)."""
    recorder = _Recorder(policies, rows_budget_bytes)
    cache = model.new_cache(recorder)
    start = time.perf_counter()
    logits = model.forward(ids, cache)
    cache.policy = None
    return Prefilled(cache, recorder.prompts, logits, time.perf_counter() - start, list(ids))
