"""One private generation, as run by each party: model setup, the shared generation loop, costs.

The server holds the weights; the client holds the prompt and gets the tokens. Public: the
architecture, the prompt length, the number of new tokens (and when the client stops at EOS).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mpcache.core.approximations import Approximations
from mpcache.core.policy import Policy
from mpcache.generation.chat import Conversation, TurnResult
from mpcache.generation.generate import GenerationResult, decode, generate
from mpcache.models import Transformer, load_model
from mpcache.models.config import expected_shapes
from mpcache.models.loading import LoadedModel
from protocols.mpc.backend import MPCBackend
from protocols.mpc.plain_prefill import shared_prefill
from protocols.net.accounting import Cost, StepLog, diff, total
from protocols.net.runtime import CLIENT, Party, RuntimeFault


@dataclass
class PrivateModel:
    party: Party
    model: LoadedModel  # the client's copy is used for its config and tokenizer only
    transformer: Transformer
    backend: MPCBackend
    setup: Cost = field(default_factory=Cost)


def build(party: Party, model_spec: str, approx: Approximations | None = None, mask_reuse: bool = True,
          reveal_logits: bool = False, debug_logits: bool = False,
          loaded: LoadedModel | None = None) -> PrivateModel:
    """Load the model (or take ``loaded``) and share its weights (server) / placeholders of the same
    shapes (client)."""
    model = loaded or load_model(model_spec)
    if party.is_server:  # both parties share the weights in the same (sorted) order
        model.weights = {n: model.weights[n] for n in sorted(model.weights)}
    else:  # the client never uses the weights: shapes are public
        shapes = expected_shapes(model.config)
        model.weights = {n: torch.empty(shapes[n], device="meta") for n in sorted(shapes)}
    backend = MPCBackend(party, approx, mask_reuse=mask_reuse, reveal_logits=reveal_logits,
                         debug_logits=debug_logits)
    # Not the model spec: a folder path and a name may hold the same model (the chat checks the
    # weights digest itself).
    check_same(backend, (model.config.to_dict(), mask_reuse, reveal_logits, debug_logits, party.dealer))
    transformer = Transformer(model.config, model.weights, backend)
    if party.is_server:
        model.weights = {}  # the shares and masks are all we need from now on
    return PrivateModel(party, model, transformer, backend, total(backend.meter.snapshot()))


def check_same(backend: MPCBackend, settings) -> None:
    """Both parties must run with the same settings: the client compares them with the server's."""
    theirs = backend.comm.broadcast_obj(settings if backend.rank == 0 else None, 0)
    if backend.rank != 0 and theirs != settings:
        raise RuntimeFault(f"the parties disagree on the run settings: server {theirs}, client {settings}")


@dataclass
class PrivateRun:
    result: GenerationResult
    steps: list[dict[str, Cost]]  # per token: cost since the previous token, per phase
    seconds: float


def private_generate(pm: PrivateModel, prompt_ids: list[int] | None, max_new_tokens: int,
                     on_token: Callable[[int, dict[str, Cost]], None] | None = None,
                     policy: Policy | None = None, prefill: str = "mpc") -> PrivateRun:
    """Both parties call this; the client passes its prompt ids, the server ``None``.

    ``on_token(token, step_cost)`` runs on both parties after each token (token -1 on the server).
    ``policy``: the KV-cache policy of this generation (a fresh instance; default: the full cache).
    ``prefill="plaintext"``: the cost-benchmark mode of ``protocols.mpc.plain_prefill`` (the client
    sends its prompt to the server; NOT private).
    """
    backend = pm.backend
    n, max_new = backend.comm.broadcast_obj(
        (len(prompt_ids), max_new_tokens) if pm.party.is_client else None, CLIENT
    )
    ids = list(prompt_ids) if pm.party.is_client else [0] * n
    log = StepLog()
    log.mark(backend.meter)

    def step(token: int) -> None:
        log.mark(backend.meter)
        if on_token is not None:
            on_token(token, log.steps[-1])

    eos = tuple(pm.model.tokenizer.eos_token_ids) if pm.party.is_client else ()
    start = time.perf_counter()
    if prefill == "plaintext":
        ids = backend.comm.broadcast_obj(ids if pm.party.is_client else None, CLIENT)
        cache, token = shared_prefill(pm, pm.model.name, ids if pm.party.is_server else None, n,
                                      policy or Policy())
        result = GenerationResult(prompt_len=n, cache=cache)
        result.new_ids, result.stopped_at_eos = decode(pm.transformer, cache, token, max_new, eos, step)
    else:
        result = generate(pm.transformer, ids, max_new, eos, step, policy=policy)
    return PrivateRun(result, log.steps[1:], time.perf_counter() - start)


@dataclass
class PrivateTurn:
    result: TurnResult
    cost: Cost  # the whole turn
    prefill: Cost  # the turn's own tokens, up to the first answer token
    prefill_phases: dict[str, Cost] = field(default_factory=dict)  # this party's counts, per phase


def private_turn(pm: PrivateModel, conv: Conversation, ids: list[int] | None, n: int, max_new_tokens: int,
                 on_token: Callable[[int], None] | None = None) -> PrivateTurn:
    """One chat turn on the persistent secret cache. Both parties call it with the public ``n`` and
    ``max_new_tokens`` (agreed on the control channel); only the client passes the ``ids``."""
    meter = pm.backend.meter
    before, phases0 = meter.total(), meter.snapshot()
    marks: list[Cost] = []
    phases: dict[str, Cost] = {}

    def step(token: int) -> None:
        if not marks:
            marks.append(meter.total())
            spent = diff(meter.snapshot(), phases0)
            phases.update((k, v) for k, v in spent.items() if v.online_bytes or v.rounds)
        if on_token is not None:
            on_token(token)

    ids = list(ids) if pm.party.is_client else [0] * n
    eos = tuple(pm.model.tokenizer.eos_token_ids) if pm.party.is_client else ()
    result = conv.turn(ids, max_new_tokens, eos, step)
    after = meter.total()
    return PrivateTurn(result, after - before, (marks[0] if marks else after) - before, phases)
