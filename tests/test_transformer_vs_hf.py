"""Our transformer (PlainBackend) against Hugging Face transformers on the same weights."""

import pytest
import torch
from hf_reference import hf_greedy, hf_model

from mpcache.core.backend import PlainBackend
from mpcache.generation.generate import generate
from mpcache.models import Transformer


def ours(loaded):
    return Transformer(loaded.config, loaded.weights, PlainBackend())


def prefill_logits_diff(loaded, ids):
    with torch.no_grad():
        ref = hf_model(loaded)(torch.tensor([ids])).logits[0]
    got = ours(loaded).forward(ids, ours(loaded).new_cache(), all_logits=True)
    assert got.shape == ref.shape
    return (got - ref).abs().max().item()


def test_tiny_prefill_logits_match_hf(tiny):
    ids = tiny.tokenizer.encode("The bundled tiny model, random weights: a fast reference check.")
    assert prefill_logits_diff(tiny, ids) <= 1e-4


def test_tiny_decode_logits_match_prefill(tiny):
    """Token-by-token decode through our cache gives the logits of one full prefill."""
    ids = tiny.tokenizer.encode("decode step by step")
    model = ours(tiny)
    full = model.forward(ids, model.new_cache(), all_logits=True)
    cache = model.new_cache()
    model.forward(ids[:3], cache)
    steps = [model.forward([t], cache) for t in ids[3:]]
    assert torch.allclose(torch.cat(steps), full[3:], atol=1e-5)


def test_tiny_greedy_matches_hf_generate(tiny):
    hf = hf_model(tiny)
    for prompt in ["abc", "random weights still decode deterministically"]:
        ids = tiny.tokenizer.encode(prompt)
        eos = tiny.tokenizer.eos_token_ids
        assert generate(ours(tiny), ids, 24, eos).new_ids == hf_greedy(hf, ids, 24, eos)


def test_max_positions_enforced(tiny):
    from mpcache.core.errors import UserError

    with pytest.raises(UserError, match="exceeds the model's"):
        generate(ours(tiny), [1] * 10, tiny.config.max_positions)


@pytest.mark.slow
def test_smollm2_prefill_logits_match_hf(smollm2):
    text = "Secure two-party computation lets a client and a server evaluate a model jointly. " * 8
    ids = smollm2.tokenizer.encode(text)[:64]
    assert len(ids) == 64
    assert prefill_logits_diff(smollm2, ids) <= 1e-3


@pytest.mark.slow
def test_smollm2_greedy_matches_hf_generate(smollm2):
    hf = hf_model(smollm2)
    tok = smollm2.tokenizer
    prompts = [
        tok.encode("What is the capital of France?", chat=True),
        tok.encode("The three primary colors are"),
        tok.encode("def fibonacci(n):"),
    ]
    lengths = []
    for ids in prompts:
        eos = smollm2.tokenizer.eos_token_ids
        got = generate(ours(smollm2), ids, 32, eos).new_ids
        assert got == hf_greedy(hf, ids, 32, eos)
        lengths.append(len(got))
    assert max(lengths) == 32  # at least one prompt runs the full 32 tokens


@pytest.mark.slow
def test_smollm2_tokenizer_matches_transformers(smollm2):
    """Our light tokenizer (tokenizers + jinja2) encodes exactly like transformers' AutoTokenizer."""
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(smollm2.folder)
    text = "Private inference: 2 parties, ünïcode, and code `x = 1`."
    assert smollm2.tokenizer.encode(text) == ref(text)["input_ids"]
    chat = ref.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    chat = chat["input_ids"] if isinstance(chat, dict) or hasattr(chat, "keys") else chat
    assert smollm2.tokenizer.encode(text, chat=True) == list(chat)
    assert smollm2.tokenizer.decode(smollm2.tokenizer.encode(text)) == text


def test_plain_topk_gather_picks_largest_rows_in_order():
    from mpcache.core.backend import PlainBackend

    b = PlainBackend()
    scores = torch.tensor([[0.1, 5.0, 0.3, 4.0], [9.0, 0.0, 8.0, 7.0]])
    sel = b.topk(scores, 2)
    assert sel.tolist() == [[1, 3], [0, 2]]
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    assert torch.equal(b.gather(sel, x), torch.stack([x[0, [1, 3]], x[1, [0, 2]]]))
