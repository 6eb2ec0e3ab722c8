"""A multi-turn conversation over one persistent KV cache (plaintext or secret, any Backend).

Each turn feeds only its own tokens (the chat template's text for the new user message, plus the
end of the previous answer) on top of the cache left by the earlier turns, then decodes greedily.
Between turns the cache is bounded by the policy: ``streaming`` keeps the first ``sink`` tokens
and the most recent ones, ``budget`` tokens in all (a public slice, no secret work); ``full`` keeps
everything. Keys are cached after RoPE, so positions keep counting: a turn that would pass the
model's window is refused (:class:`TurnRefused`) before any work, and the conversation goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jinja2.sandbox import ImmutableSandboxedEnvironment

from mpcache.core.cache import KVCache
from mpcache.core.errors import UserError
from mpcache.generation.generate import decode
from mpcache.models.transformer import Transformer

CHAT_POLICIES = ("streaming", "full")
SINK = 4


class TurnRefused(UserError):
    """A turn that cannot run (empty, too long, past the model's window): the chat goes on."""


@dataclass
class TurnResult:
    new_ids: list[int]
    prompt_len: int
    seconds: float
    cache_tokens: int  # tokens held after the turn
    stopped_at_eos: bool = False


@dataclass
class ChatFormat:
    """Token ids of one turn: the first turn carries the template's preamble (system prompt, BOS),
    later turns only close the previous answer and open the next one."""

    tokenizer: object

    def turn_ids(self, message: str, first: bool, last_token: int | None) -> list[int]:
        tok = self.tokenizer
        if getattr(tok, "has_chat_template", False):
            if first:
                return tok.encode_chat([{"role": "user", "content": message}])
            close, opening = self._template_pieces(message)
            ids = [] if last_token is None else [last_token]
            eos_text = tok.special.get("eos_token") or ""
            if last_token in tok.eos_token_ids and eos_text and close.startswith(eos_text):
                close = close[len(eos_text):]  # the answer's own EOS already closes it
            return ids + tok.inner.encode(close + opening, add_special_tokens=False).ids
        if first:
            return tok.encode(message, chat=True)
        ids = [] if last_token is None else [last_token]
        return ids + list(f"\nUser: {message}\nAssistant:".encode())

    def _template_pieces(self, message: str) -> tuple[str, str]:
        """(text that ends an assistant message, text of a new user message + generation prompt),
        cut out of the template's rendering of a two-turn conversation with marker contents."""
        tok = self.tokenizer
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        template = env.from_string(tok.chat_template)
        a, b = "\x00A\x00", "\x00B\x00"
        msgs = [{"role": "user", "content": a}, {"role": "assistant", "content": b}]
        before = template.render(messages=msgs, add_generation_prompt=False, **tok.special)
        after = template.render(messages=msgs + [{"role": "user", "content": message}],
                                add_generation_prompt=True, **tok.special)
        if not after.startswith(before):
            raise UserError("this chat template re-renders earlier turns; multi-turn chat needs a "
                            "template that only appends")
        return before[before.index(b) + len(b):], after[len(before):]


@dataclass
class Conversation:
    """One conversation's cache and the turn loop; both parties run it in step under MPC."""

    model: Transformer
    policy: str = "streaming"
    budget: int = 512  # tokens the cache keeps between turns (streaming)
    cache: KVCache = field(init=False)
    turns: int = field(default=0, init=False)
    last_token: int | None = field(default=None, init=False)

    def __post_init__(self):
        if self.policy not in CHAT_POLICIES:
            raise UserError(f"the chat supports --policy {' or '.join(CHAT_POLICIES)}, got {self.policy!r}")
        if self.policy == "streaming" and self.budget < 2 * SINK:
            raise UserError(f"--budget must be at least {2 * SINK} tokens, got {self.budget}")
        self.reset()

    def reset(self) -> None:
        self.cache = self.model.new_cache()
        self.turns, self.last_token = 0, None

    @property
    def position(self) -> int:
        return self.cache.position

    @property
    def cache_tokens(self) -> int:
        return self.cache.layers[0].length

    def check(self, n_tokens: int, max_new_tokens: int) -> None:
        """Raise TurnRefused when a turn of ``n_tokens`` cannot run (public facts only)."""
        window = self.model.config.max_positions
        if n_tokens < 1:
            raise TurnRefused("the message is empty")
        if max_new_tokens < 1:
            raise TurnRefused(f"max new tokens must be at least 1, got {max_new_tokens}")
        if self.position + n_tokens + max_new_tokens > window:
            raise TurnRefused(
                f"this turn needs {n_tokens} + {max_new_tokens} positions after {self.position} "
                f"used, past the model's window of {window}: /reset starts a new conversation"
            )

    def bound(self) -> None:
        """Evict down to the budget (streaming: sink + most recent; a public slice)."""
        if self.policy != "streaming":
            return
        b = self.model.backend
        for lc in self.cache.layers:
            if lc.length > self.budget:
                start = lc.length - (self.budget - SINK)
                lc.k = b.cat([lc.k[:, :SINK], lc.k[:, start:]], dim=1)
                lc.v = b.cat([lc.v[:, :SINK], lc.v[:, start:]], dim=1)

    def turn(self, ids: list[int], max_new_tokens: int, eos_ids: tuple[int, ...] = (),
             on_token: Callable[[int], None] | None = None) -> TurnResult:
        """Feed this turn's ``ids`` on top of the cache and decode greedily."""
        self.check(len(ids), max_new_tokens)
        self.bound()
        b = self.model.backend
        start = time.perf_counter()
        token = b.next_token(self.model.forward(list(ids), self.cache))
        new, stopped = decode(self.model, self.cache, token, max_new_tokens, eos_ids, on_token)
        token = new[-1]
        self.turns += 1
        self.last_token = token  # produced but not yet fed: the next turn starts with it
        return TurnResult(new, len(ids), time.perf_counter() - start, self.cache_tokens, stopped)
