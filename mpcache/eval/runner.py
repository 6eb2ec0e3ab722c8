"""Prefill once, decode many: every policy acts only after prefill, so one full-cache prefill per
sample serves every (policy, budget) pair. The prefill records each layer's :class:`PromptInfo`;
each run forks the cache (tensors shared, never written in place), replays ``after_prefill`` with
its own fresh policy, and decodes. Results are identical to a plain ``generate`` with that policy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mpcache.backend import Backend
from mpcache.cache import KVCache, LayerCache
from mpcache.generate import decode
from mpcache.models.transformer import Transformer
from mpcache.policies.base import Policy, PromptInfo

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


@dataclass
class RunResult:
    new_ids: list[int] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)  # teacher-forced: -log p(target) per step
    mean_attended: float = 0.0
    kv_bytes: int = 0
    seconds: float = 0.0


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


def _start(model: Transformer, pre: Prefilled, policy: Policy) -> tuple[KVCache, torch.Tensor]:
    """The policy's cache and the last prompt logits: a replay of the recorded full prefill, or the
    policy's own prefill where it has one (``own_prefill``, e.g. Locret's faithful chunked schedule)."""
    own = getattr(policy, "own_prefill", None)
    mine = own(model, pre.ids) if own is not None else None
    return mine if mine is not None else (pre.cache.start(policy, pre.prompts, model.backend), pre.logits)


def _finish(result: RunResult, cache: KVCache, policy: Policy, start: float) -> RunResult:
    result.mean_attended = cache.mean_attended()
    result.kv_bytes = cache.nbytes() + sum(policy.extra_nbytes(lc) for lc in cache.layers)
    result.seconds = time.perf_counter() - start
    return result


def greedy(
    model: Transformer, pre: Prefilled, policy: Policy, max_new: int, eos: tuple[int, ...]
) -> RunResult:
    """Greedy decode from the prefilled cache with ``policy`` (stops at EOS or ``max_new`` tokens)."""
    start = time.perf_counter()
    cache, logits = _start(model, pre, policy)
    result = RunResult()
    result.new_ids, _ = decode(model, cache, model.backend.next_token(logits), max_new, eos)
    return _finish(result, cache, policy, start)


def teacher_forced(model: Transformer, pre: Prefilled, policy: Policy, targets: list[int]) -> RunResult:
    """Feed ``targets[:-1]`` one token at a time; record -log p of each next target (policy active)."""
    start = time.perf_counter()
    cache, _ = _start(model, pre, policy)
    result = RunResult()
    for token, nxt in zip(targets[:-1], targets[1:], strict=True):
        logits = model.backend.reveal(model.forward([token], cache))[-1].double()
        result.nll.append(float(torch.logsumexp(logits, 0) - logits[nxt]))
    result.new_ids = list(targets[:-1])
    return _finish(result, cache, policy, start)


def perplexity(nll: list[float]) -> float:
    return math.exp(sum(nll) / len(nll)) if nll else float("nan")
