"""A multi-turn conversation over one persistent KV cache (plaintext or secret, any Backend).

Each turn feeds only its own tokens (the chat template's text for the new user message, plus the
end of the previous answer) on top of the cache left by the earlier turns, as ONE chunk that
attends to everything the cache holds, then decodes greedily. The cache is managed by a policy of
the registry (``mpcache.policies``: ``NAME[:KEY=VALUE...]``, budget a fraction in (0, 1]), with
the conversation so far as the policy's prompt (a fresh one per conversation, from ``new_policy``):

- its stage (``after_prefill``: static eviction, cluster summaries) runs over the whole cache after
  the first turn and after every turn of at least ``stage_tokens`` new tokens (a pasted document),
  with that turn's queries as the observation window; shorter turns just join the cache;
- its per-step budget is ``budget_tokens(T)`` with T the conversation's length when the turn's
  tokens are in, so dynamic selection serves every answer token and the bound follows the chat;
- its decode hooks run on every answer token, as in a single generation.

Keys are cached after RoPE, so positions keep counting: a turn that would pass the model's window
is refused (:class:`TurnRefused`) before any work, and the conversation goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jinja2.sandbox import ImmutableSandboxedEnvironment

from mpcache.core.cache import KVCache
from mpcache.core.errors import UserError
from mpcache.core.policy import Policy
from mpcache.generation.generate import decode
from mpcache.models.transformer import Transformer

STAGE_TOKENS = 256  # a turn this long (a pasted document) runs the policy's stage again


class TurnRefused(UserError):
    """A turn that cannot run (empty, too long, past the model's window): the chat goes on."""


@dataclass
class TurnResult:
    new_ids: list[int]
    prompt_len: int
    seconds: float
    cache_tokens: int  # tokens held after the turn
    stopped_at_eos: bool = False
    first_token_s: float = 0.0  # the turn's chunk and its first answer token
    staged: bool = False  # the policy's stage ran after this turn's chunk


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
    new_policy: Callable[[], Policy] = Policy  # e.g. partial(mpcache.policies.parse_spec, spec, budget)
    stage_tokens: int = STAGE_TOKENS
    label: str = ""  # how /stats names the policy (its spec); default: its name
    policy: Policy = field(init=False)
    cache: KVCache = field(init=False)
    turns: int = field(default=0, init=False)
    staged: list[int] = field(default_factory=list, init=False)  # turns after which the stage ran
    last_token: int | None = field(default=None, init=False)

    def __post_init__(self):
        if self.stage_tokens < 1:
            raise UserError(f"the stage threshold must be at least 1 token, got {self.stage_tokens}")
        self.reset()

    def reset(self) -> None:
        self.policy = self.new_policy()  # a fresh instance per conversation (it keeps per-sequence state)
        self.cache = self.model.new_cache(self.policy)
        self.turns, self.staged, self.last_token = 0, [], None

    @property
    def position(self) -> int:
        return self.cache.position

    @property
    def cache_tokens(self) -> int:
        """Tokens held (the most over the layers: a policy may keep per-layer counts)."""
        return max(lc.length for lc in self.cache.layers)

    def kept(self) -> str:
        """What the policy keeps, in public terms (which tokens stays secret under MPC)."""
        held, pos = self.cache_tokens, self.position
        share = f" ({100 * held / pos:.0f}% of {pos})" if pos else ""
        attended = self.cache.mean_attended()
        per_step = f", {attended:.0f} attended per layer per answer token on average" if attended else ""
        stages = ", ".join(str(t) for t in self.staged) or "none yet"
        name = self.label or self.policy.name
        return (f"policy {name} (budget {self.policy.budget:g}): {held} tokens held{share}{per_step}; "
                f"stage after turn(s) {stages}")

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

    def will_stage(self, n_tokens: int) -> bool:
        """Whether the policy's stage runs after a turn of ``n_tokens`` (public)."""
        return self.turns == 0 or n_tokens >= self.stage_tokens

    def turn(self, ids: list[int], max_new_tokens: int, eos_ids: tuple[int, ...] = (),
             on_token: Callable[[int], None] | None = None) -> TurnResult:
        """Feed this turn's ``ids`` on top of the cache as one chunk and decode greedily."""
        self.check(len(ids), max_new_tokens)
        b = self.model.backend
        staged = self.will_stage(len(ids))
        start = time.perf_counter()
        token = b.next_token(self.model.forward(list(ids), self.cache, stage=staged))
        self._rebudget()
        first_s = time.perf_counter() - start
        new, stopped = decode(self.model, self.cache, token, max_new_tokens, eos_ids, on_token)
        token = new[-1]
        self.turns += 1
        if staged:
            self.staged.append(self.turns)
        self.last_token = token  # produced but not yet fed: the next turn starts with it
        return TurnResult(new, len(ids), time.perf_counter() - start, self.cache_tokens, stopped,
                          first_s, staged)

    def _rebudget(self) -> None:
        """The per-step budget follows the conversation: the policies that bound a step keep it in
        their layer state as ``n_budget`` (streaming, H2O, Quest, MPCache), set from the prompt by
        their stage; here T is the whole conversation once this turn's tokens are in."""
        n_budget = self.policy.budget_tokens(self.position)
        for lc in self.cache.layers:
            if "n_budget" in lc.state:
                lc.state["n_budget"] = n_budget
