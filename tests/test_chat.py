"""The chat's persistent cache: a turn feeds only its own tokens, yet decodes exactly what a
fresh run over the whole conversation decodes; eviction and refusals keep the session usable."""

import pytest

from mpcache.core.approximations import Approximations
from mpcache.core.backend import PlainBackend
from mpcache.generation.chat import ChatFormat, Conversation, TurnRefused
from mpcache.generation.generate import generate
from mpcache.models import Transformer


def _model(loaded, exact=False):
    return Transformer(loaded.config, loaded.weights, PlainBackend(Approximations(exact=exact)))


def test_turns_continue_the_cache_like_one_run_over_the_conversation(tiny):
    conv = Conversation(_model(tiny), policy="full")
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


def test_streaming_bound_keeps_sink_and_recent_and_matches_a_sliced_reference(tiny):
    conv = Conversation(_model(tiny, exact=True), policy="streaming", budget=16)
    fmt = ChatFormat(tiny.tokenizer)
    conv.turn(fmt.turn_ids("a long first message here", True, None), 3)
    assert conv.cache_tokens > 16
    k_before = conv.cache.layers[0].k.clone()
    conv.bound()
    k_after = conv.cache.layers[0].k
    assert k_after.shape[1] == 16
    assert (k_after[:, :4] == k_before[:, :4]).all() and (k_after[:, 4:] == k_before[:, -12:]).all()


def test_bad_turns_are_refused_and_the_conversation_goes_on(tiny):
    conv = Conversation(_model(tiny), policy="full")
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
