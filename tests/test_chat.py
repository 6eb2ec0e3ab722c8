"""The chat's persistent cache: a turn feeds only its own tokens, yet decodes exactly what a
fresh run over the whole conversation decodes; every policy that runs under MPC manages it across
turns; refusals keep the session usable."""

import math
from functools import partial

import pytest
import torch

from mpcache.core.approximations import Approximations
from mpcache.core.backend import PlainBackend
from mpcache.generation.chat import ChatFormat, Conversation, TurnRefused
from mpcache.generation.generate import generate
from mpcache.models import Transformer
from mpcache.policies import parse_spec, supported
from mpcache.programs.commands.chat import canonical_spec


def _conv(model, spec: str = "full", budget: float = 1.0, stage_tokens: int = 256) -> Conversation:
    return Conversation(model, partial(parse_spec, spec, budget), stage_tokens, spec)


def _model(loaded, exact=False):
    return Transformer(loaded.config, loaded.weights, PlainBackend(Approximations(exact=exact)))


def test_turns_continue_the_cache_like_one_run_over_the_conversation(tiny):
    conv = _conv(_model(tiny))
    fmt = ChatFormat(tiny.tokenizer)
    fed: list[int] = []
    for i, message in enumerate(["Hello there", "And again?", "Third"]):
        ids = fmt.turn_ids(message, first=i == 0, last_token=conv.last_token)
        result = conv.turn(ids, 5)
        reference = generate(_model(tiny), fed + ids, 5)
        assert result.new_ids == reference.new_ids, f"turn {i + 1}"
        assert result.prompt_len == len(ids)  # only the turn's own tokens were fed
        fed += ids + result.new_ids[:-1]
        assert conv.position == len(fed)


DOC = "The quick brown fox jumps over the lazy dog near the river bank. " * 6  # ~400 byte tokens


@pytest.mark.parametrize("spec", supported("mpc"))
def test_every_mpc_policy_serves_a_document_chat(tiny, spec):
    """A short turn, a document (stage), two questions: one chunk per turn, the budget follows the
    conversation, the per-step bound holds for the answer tokens."""
    conv = _conv(_model(tiny), spec, 0.2, stage_tokens=100)
    fmt = ChatFormat(tiny.tokenizer)
    for message in ["hi", DOC, "Who jumps?", "Where?"]:
        ids = fmt.turn_ids(message, conv.turns == 0, conv.last_token)
        result = conv.turn(ids, 3)
        assert result.prompt_len == len(ids) and len(result.new_ids) == 3
        assert result.staged == (conv.turns == 1 or len(ids) >= 100)
        for lc in conv.cache.layers:
            if "n_budget" in lc.state:
                assert lc.state["n_budget"] == conv.policy.budget_tokens(conv.position - 2)
    assert conv.staged == [1, 2]
    if spec in ("streaming", "h2o"):  # the cache itself is the budget
        assert conv.cache_tokens <= conv.policy.budget_tokens(conv.position) + 2
    assert "stage after turn(s) 1, 2" in conv.kept()


def test_static_stage_on_a_document_turn_bounds_the_cache_and_short_turns_only_append(tiny):
    conv = _conv(_model(tiny), "mpcache:static=true", 0.2, stage_tokens=100)
    fmt = ChatFormat(tiny.tokenizer)
    conv.turn(fmt.turn_ids("hi", True, None), 2)
    doc = fmt.turn_ids(DOC, False, conv.last_token)
    before = conv.cache_tokens
    conv.turn(doc, 2)
    held = before + len(doc)  # what the stage saw; it keeps rho = 0.4 of it (budget 0.2)
    assert conv.cache_tokens == math.ceil(0.4 * held) + 1  # + the answer token fed at decode
    after_doc = conv.cache_tokens
    question = fmt.turn_ids("Who jumps?", False, conv.last_token)
    result = conv.turn(question, 2)
    assert not result.staged and conv.cache_tokens == after_doc + len(question) + 1


def test_one_chunk_turn_with_the_full_policy_is_token_by_token(tiny):
    """The chunk attends to everything held before it: the same logits as feeding it token by token."""
    ids = list(range(40, 90))
    one, many = (_model(tiny, exact=True) for _ in range(2))
    c1, c2 = one.new_cache(), many.new_cache()
    one.forward(ids[:20], c1), many.forward(ids[:20], c2)
    chunk = one.forward(ids[20:], c1, stage=False)
    for t in ids[20:]:
        last = many.forward([t], c2)
    assert torch.allclose(chunk, last, atol=1e-4)


def test_policy_specs_have_one_spelling():
    assert canonical_spec("mpcache:static=1:s1=64") == canonical_spec(" mpcache:s1=64:static=true")
    assert canonical_spec("full") == "full"


def test_bad_turns_are_refused_and_the_conversation_goes_on(tiny):
    conv = _conv(_model(tiny))
    with pytest.raises(TurnRefused, match="empty"):
        conv.turn([], 3)
    window = tiny.config.max_positions
    with pytest.raises(TurnRefused, match="window"):
        conv.turn([65] * window, 3)
    assert conv.position == 0
    assert len(conv.turn([256, 65, 66], 2).new_ids) == 2
    conv.reset()
    assert conv.position == 0 and conv.last_token is None


def test_chat_template_turns_only_append(smollm2):
    fmt = ChatFormat(smollm2.tokenizer)
    tok = smollm2.tokenizer
    first = fmt.turn_ids("Hi", True, None)
    answer = tok.inner.encode("Hello!", add_special_tokens=False).ids + [tok.eos_token_ids[0]]
    second = fmt.turn_ids("Bye", False, answer[-1])
    whole = tok.encode_chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                             {"role": "user", "content": "Bye"}])
    assert first + answer[:-1] + second == whole
