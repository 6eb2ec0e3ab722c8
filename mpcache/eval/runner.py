"""Prefill once, decode many: every policy acts only after prefill, so one full-cache prefill per
sample serves every (policy, budget) pair. The prefill records each layer's :class:`PromptInfo`;
each run forks the cache (tensors shared, never written in place), replays ``after_prefill`` with
its own fresh policy, and decodes. Results are identical to a plain ``generate`` with that policy.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from mpcache.core.cache import KVCache
from mpcache.core.policy import Policy
from mpcache.generation.generate import decode
from mpcache.generation.prefill import Prefilled
from mpcache.models.transformer import Transformer


@dataclass
class RunResult:
    new_ids: list[int] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)  # teacher-forced: -log p(target) per step
    mean_attended: float = 0.0
    kv_bytes: int = 0
    seconds: float = 0.0
    # Teacher-forced runs: the most tokens any layer's cache held after a step (its K/V, without a
    # policy's side state) and the most keys any layer attended in one step.
    max_held: int = 0
    max_step_keys: int = 0


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
        before = [lc.attended for lc in cache.layers]
        logits = model.backend.reveal(model.forward([token], cache))[-1].double()
        result.nll.append(float(torch.logsumexp(logits, 0) - logits[nxt]))
        result.max_held = max(result.max_held, *(lc.length for lc in cache.layers))
        step = (lc.attended - a for lc, a in zip(cache.layers, before, strict=True))
        result.max_step_keys = max(result.max_step_keys, *step)
    result.new_ids = list(targets[:-1])
    return _finish(result, cache, policy, start)


def perplexity(nll: list[float]) -> float:
    return math.exp(sum(nll) / len(nll)) if nll else float("nan")
