"""A chunk's causal attention in row blocks is the one-softmax attention, with fewer score entries."""

import pytest
import torch

import mpcache.models.causal as causal
from mpcache.core.approximations import Approximations
from mpcache.core.backend import PlainBackend
from mpcache.generation.generate import generate
from mpcache.models import Transformer
from mpcache.policies import parse_spec


@pytest.mark.parametrize("n,past,keep", [(50, 0, 0), (50, 0, 30), (37, 20, 5), (9, 100, 9)])
def test_blocks_cover_the_rows_and_the_last_holds_the_window(n, past, keep):
    bounds = causal.causal_blocks(n, past, 4, keep, max_entries=500)
    assert bounds[0] == 0 and bounds[-1] == n and bounds == sorted(set(bounds))
    assert bounds[-1] - bounds[-2] >= keep
    assert len(bounds) > 2 or 4 * n * (past + n) <= 500 or keep == n
    assert causal.causal_blocks(n, past, 4, keep, max_entries=10**9) == [0, n]


@pytest.mark.parametrize("past", [0, 13])
def test_blocked_attention_equals_one_softmax(past):
    torch.manual_seed(0)
    b = PlainBackend(Approximations.preset("fast"))
    hkv, g, n, d = 2, 2, 40, 8
    grouped = torch.randn(hkv, g * n, d)
    keys, values = torch.randn(hkv, past + n, d), torch.randn(hkv, past + n, d)
    one = causal.causal_attention(b, grouped, keys, values, past, n, 10, True, max_entries=10**9)
    many = causal.causal_attention(b, grouped, keys, values, past, n, 10, True, max_entries=900)
    assert len(causal.causal_blocks(n, past, hkv * g, 10, 900)) > 3
    for x, y in zip(one, many, strict=True):
        assert x.shape == y.shape and torch.allclose(x, y, atol=1e-5)


def test_a_blocked_prefill_decodes_the_same_tokens_with_a_static_stage(tiny, monkeypatch):
    ids = list(range(30, 130))
    model = Transformer(tiny.config, tiny.weights, PlainBackend(Approximations.preset("fast")))
    ref = generate(model, ids, 6, policy=parse_spec("mpcache:static=true", 0.2))
    monkeypatch.setattr(causal, "MAX_ENTRIES", 3000)  # 4 heads x 100 x 100 entries: 14 blocks
    got = generate(model, ids, 6, policy=parse_spec("mpcache:static=true", 0.2))
    assert got.new_ids == ref.new_ids
    assert got.cache.layers[0].length == ref.cache.layers[0].length
