"""The decode-heavy task (``mpcache eval decode``): eviction while a long continuation is decoded.

LazyEviction's setting is a long generation from a short prompt, where the policy evicts during
decode. Here: prefill a ``length``-token prefix of a perplexity document (the essays the ``ppl``
task reads), then feed the next ``decode_tokens`` tokens ONE AT A TIME through the decode path
(teacher forcing: the text is fixed, so every policy is scored on the same tokens) and report the
perplexity of those tokens.

The budget is a fraction of the WHOLE sequence (prefix + continuation): ``budget=0.1`` with a
512-token prefix and 1,024 decoded tokens caps every layer's cache at ceil(0.1 * 1536) = 154 tokens
from the end of prefill to the last step. The policies take their budget as a fraction of the
prompt (``Policy.budget_tokens``), so the sweep hands them ``budget * (length + decode_tokens) /
length``; that must stay below 1 (a policy's budget of 1 means "no limit"), i.e. the prefix must be
longer than the cap. Each run records the most tokens a layer's cache held after any step and the
most keys it attended in one step (``max_held_tokens``, ``max_step_keys``) next to the cap
(``cap_tokens``), and ``capped`` says whether both stayed within it. A policy's side state (e.g.
Attention-Gate's own K'/V' of every token) is not in the held count; ``kv_bytes`` counts it.
"""

from __future__ import annotations

import torch

from mpcache.core.errors import UserError
from mpcache.core.policy import Policy
from mpcache.models.transformer import Transformer

TASK = "decode"
DECODE_TOKENS = 1024  # the default continuation length (the issue asks for >= 1,000)


def policy_budget(budget: float, prompt_len: int, decode_tokens: int) -> float:
    """The fraction of the prompt that caps the cache at ``budget`` of prompt + continuation."""
    if budget >= 1.0:
        return 1.0  # the full cache: no limit
    scaled = budget * (prompt_len + decode_tokens) / prompt_len
    if scaled >= 1.0:
        raise UserError(f"decode: a budget of {budget} of {prompt_len} + {decode_tokens} tokens is "
                        f"{cap_tokens(budget, prompt_len, decode_tokens)} tokens, not less than the "
                        f"{prompt_len}-token prefix: use a longer --length or a smaller --budget")
    return scaled


def cap_tokens(budget: float, prompt_len: int, decode_tokens: int) -> int:
    """The cache cap in tokens: ``budget`` of the whole sequence (the same rounding as the policies)."""
    return Policy(budget=budget).budget_tokens(prompt_len + decode_tokens)


def record_fields(budget: float, prompt_len: int, decode_tokens: int, held: int, keys: int) -> dict:
    """The decode task's fields of a record: ``held``/``keys`` are the maxima over its samples' steps
    (``RunResult.max_held``, ``max_step_keys``)."""
    fields = {"decode_tokens": decode_tokens, "budget_of": "prefix + continuation",
              "policy_budget": round(policy_budget(budget, prompt_len, decode_tokens), 6),
              "max_held_tokens": held, "max_step_keys": keys}
    if budget < 1.0:
        cap = cap_tokens(budget, prompt_len, decode_tokens)
        fields.update(cap_tokens=cap, capped=held <= cap and keys <= cap)
    return fields


def one_pass_nll(model: Transformer, prompt: list[int], targets: list[int]) -> list[float]:
    """-log p of ``targets[1:]`` from ONE full-cache forward pass over prompt + ``targets[:-1]`` (the
    reference the full cache's token-by-token decode must match)."""
    ids = prompt + targets[:-1]
    logits = model.backend.reveal(model.forward(ids, model.new_cache(Policy()), all_logits=True))
    rows = logits[len(prompt):].double()
    nxt = torch.tensor(targets[1:])
    return (torch.logsumexp(rows, 1) - rows[torch.arange(len(nxt)), nxt]).tolist()
