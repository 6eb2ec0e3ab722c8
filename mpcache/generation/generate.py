"""Prefill + greedy decode loop, shared by the plaintext and the MPC backends."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mpcache.core.cache import KVCache
from mpcache.core.errors import UserError
from mpcache.core.policy import Policy
from mpcache.models.transformer import Transformer


@dataclass
class GenerationResult:
    prompt_len: int
    new_ids: list[int] = field(default_factory=list)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stopped_at_eos: bool = False
    cache: KVCache | None = None


def check_lengths(prompt_len: int, max_new_tokens: int, max_positions: int) -> None:
    """Raise UserError for an empty/too long prompt or a bad token count, before any work."""
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if prompt_len < 1:
        raise UserError("the prompt is empty")
    if prompt_len + max_new_tokens > max_positions:
        raise UserError(
            f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens exceeds the model's "
            f"{max_positions} positions"
        )


def generate(
    model: Transformer,
    prompt_ids: list[int],
    max_new_tokens: int,
    eos_ids: tuple[int, ...] = (),
    on_token: Callable[[int], None] | None = None,
    policy: Policy | None = None,
) -> GenerationResult:
    """Greedy generation with ``policy`` (default: the model's). ``on_token`` is called with each
    new token id as it is produced."""
    check_lengths(len(prompt_ids), max_new_tokens, model.config.max_positions)
    result = GenerationResult(prompt_len=len(prompt_ids))
    cache = model.new_cache(policy)
    start = time.perf_counter()
    token = model.backend.next_token(model.forward(prompt_ids, cache))
    result.prefill_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result.new_ids, result.stopped_at_eos = decode(model, cache, token, max_new_tokens, eos_ids, on_token)
    result.decode_seconds = time.perf_counter() - start
    result.cache = cache
    return result


def decode(
    model: Transformer,
    cache: KVCache,
    token: int,
    max_new_tokens: int,
    eos_ids: tuple[int, ...] = (),
    on_token: Callable[[int], None] | None = None,
) -> tuple[list[int], bool]:
    """The one greedy decode loop (generate, eval, the MPC parties): from the first new ``token``
    (from the prefill) until EOS or ``max_new_tokens`` tokens. Returns (tokens, stopped at EOS)."""
    backend = model.backend
    new_ids: list[int] = []
    while True:
        new_ids.append(token)
        if on_token is not None:
            on_token(token)
        # Under MPC only the client knows the token: the stop decision is made public (one bit).
        if backend.agree_stop(token in eos_ids):
            return new_ids, True
        if len(new_ids) >= max_new_tokens:
            return new_ids, False
        token = backend.next_token(model.forward([token], cache))
