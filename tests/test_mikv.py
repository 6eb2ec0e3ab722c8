"""MiKV: two tiers, one softmax, demotion, real memory against the bits-per-element formula."""

import pytest
import torch

from kernels.quant_ref import bits_per_element, dequantize_ref
from mpcache.core.backend import PlainBackend
from mpcache.core.cache import LayerCache
from mpcache.core.errors import UserError
from mpcache.core.policy import PromptInfo
from mpcache.generation.generate import generate
from mpcache.models import Transformer
from mpcache.policies import make_policy, parse_spec


def prompt_layer(t=96, hq=4, hkv=2, d=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(hq, t, d, generator=gen)
    k = torch.randn(hkv, t, d, generator=gen) * torch.linspace(0.2, 5, d)  # outlier channels
    v = torch.randn(hkv, t, d, generator=gen)
    colsum = torch.rand(hkv, t, generator=gen)
    return PromptInfo(q, colsum, 1), LayerCache(k, v, t)


def test_after_prefill_splits_tiers():
    prompt, lc = prompt_layer()
    k, v = lc.k, lc.v
    policy = make_policy("mikv", 0.25, bits=4)
    policy.after_prefill(0, prompt, lc, PlainBackend())
    n_high = 24
    assert lc.k.shape == (2, n_high, 32) and lc.k.dtype == torch.float16
    st = lc.state
    assert st["k_lo"].rows == 96 - n_high and st["k_lo"].packed.dtype == torch.int32
    # every prompt token kept exactly once: each original row is nearest to exactly one stored row
    restored_k = torch.cat([lc.k.float(), dequantize_ref(st["k_lo"]) / st["balance"][:, None, :]], 1)
    restored_v = torch.cat([lc.v.float(), dequantize_ref(st["v_lo"])], 1)
    for orig, restored in ((k, restored_k), (v, restored_v)):
        for h in range(2):
            dist = (restored[h][:, None, :] - orig[h][None]).abs().amax(-1)  # [stored, original]
            nearest = dist.argmin(0)
            assert sorted(nearest.tolist()) == list(range(96))
            assert dist.amin(0).max() < 0.15 * orig[h].abs().max()
            assert dist[:n_high].amin(1).max() < 1e-2 * orig[h].abs().max()  # high tier: fp16
    # H2O importance: the recent half of the high tier is the newest tokens
    assert policy.recent_ratio == 0.5


def test_decode_is_one_softmax_over_both_tiers_and_demotes():
    prompt, lc = prompt_layer()
    policy = make_policy("mikv", 0.25, bits=4)
    backend = PlainBackend()
    policy.after_prefill(0, prompt, lc, backend)
    for step in range(3):
        k_new, v_new = torch.randn(2, 1, 32), torch.randn(2, 1, 32)
        lc.append(k_new, v_new, backend)
        q = torch.randn(4, 1, 32)
        out, attended = policy.decode_attention(0, q, lc, backend)
        st = lc.state
        assert lc.k.shape[1] == 24 and st["k_lo"].rows == 96 - 24 + step + 1  # demoted, never dropped
        assert attended == 96 + step + 1
        # same as plain attention over [high ; dequantized low / balance]
        keys = torch.cat([lc.k.float(), dequantize_ref(st["k_lo"]) / st["balance"][:, None]], 1)
        values = torch.cat([lc.v.float(), dequantize_ref(st["v_lo"])], 1)
        qg = q[:, 0].reshape(2, 2, 32) * 32**-0.5
        probs = torch.softmax(qg @ keys.transpose(1, 2), -1)
        assert torch.allclose(out, probs @ values, atol=1e-5)
        assert torch.equal(lc.k[:, -1].float(), k_new[:, 0].half().float())  # the new token is high


def test_int8_high_tier_is_codes_and_one_softmax():
    prompt, lc = prompt_layer()
    policy = make_policy("mikv", 0.25, bits=4, high_bits=8)
    backend = PlainBackend()
    k0 = lc.k.clone()
    policy.after_prefill(0, prompt, lc, backend)
    st = lc.state
    assert lc.length == 0 and st["k_hi"].bits == 8 and st["k_hi"].rows == 24
    # int8 rows: each high token within a half quantization step of some original key
    hi = dequantize_ref(st["k_hi"])
    dist = (hi[:, :, None, :] - k0[:, None]).abs().amax(-1).amin(-1)  # [Hkv, 24]
    assert dist.max() < 0.03 * k0.abs().max()
    for step in range(3):
        lc.append(torch.randn(2, 1, 32), torch.randn(2, 1, 32), backend)
        q = torch.randn(4, 1, 32)
        out, attended = policy.decode_attention(0, q, lc, backend)
        assert lc.length == 0 and st["k_hi"].rows == 24 and st["k_lo"].rows == 96 - 24 + step + 1
        assert attended == 96 + step + 1
        keys = torch.cat([dequantize_ref(st["k_hi"]).half().float(),
                          dequantize_ref(st["k_lo"]) / st["balance"][:, None]], 1)
        values = torch.cat([dequantize_ref(st["v_hi"]).half().float(), dequantize_ref(st["v_lo"])], 1)
        probs = torch.softmax(q[:, 0].reshape(2, 2, 32) * 32**-0.5 @ keys.transpose(1, 2), -1)
        assert torch.allclose(out, probs @ values, atol=1e-4)


def test_budget_one_is_the_full_cache(tiny):
    ids = list(range(10, 70))
    full = generate(Transformer(tiny.config, tiny.weights, PlainBackend()), ids, 8)
    mikv = make_policy("mikv", 1.0)
    res = generate(Transformer(tiny.config, tiny.weights, PlainBackend(), mikv), ids, 8)
    assert res.new_ids == full.new_ids
    assert all(not lc.state and lc.k.dtype == torch.float32 for lc in res.cache.layers)


@pytest.mark.parametrize("bits,high_bits", [(2, 16), (3, 16), (4, 16), (4, 8), (2, 8)])
def test_real_bytes_match_the_formula(bits, high_bits):
    from mpcache.models import load_model

    model = load_model("random:small")  # head_dim 32: group 16
    policy = make_policy("mikv", 0.2, bits=bits, high_bits=high_bits)
    ids = torch.randint(0, 256, (500,), generator=torch.Generator().manual_seed(1)).tolist()
    res = generate(Transformer(model.config, model.weights, PlainBackend(), policy), ids, 3)
    measured = res.cache.nbytes() + sum(policy.extra_nbytes(lc) for lc in res.cache.layers)
    cfg = model.config
    elements = 2 * cfg.num_layers * cfg.num_kv_heads * res.cache.position * cfg.head_dim
    expected = elements * bits_per_element(0.2, high_bits, bits, cfg.head_dim // 2) / 8
    assert abs(measured / expected - 1) < 0.02, (measured, expected)


@pytest.mark.parametrize(
    "policy", ["mikv:bits=8", "mikv:bits=8:high_bits=8", "kvcrush+mikv:bits=8:high_bits=8"]
)
def test_mikv_int8_tracks_full_logits(policy):
    from mpcache.models import load_model

    model = load_model("random:small")
    ids = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(2)).tolist()
    ref = Transformer(model.config, model.weights, PlainBackend())
    cache = ref.new_cache()
    ref.forward(ids, cache)
    want = ref.forward([5], cache)
    tr = Transformer(model.config, model.weights, PlainBackend(), parse_spec(policy, 0.2))
    cache = tr.new_cache()
    tr.forward(ids, cache)
    got = tr.forward([5], cache)
    assert (got - want).abs().max() < 2e-2 * want.abs().max()


def test_kernels_dispatch_gives_same_tokens(monkeypatch):
    """The policy through the Triton kernels (interpreter on CPU) matches the torch references."""
    from mpcache.models import load_model

    model = load_model("random:small")
    ids = torch.randint(0, 256, (80,), generator=torch.Generator().manual_seed(3)).tolist()

    def run():
        policy = make_policy("mikv", 0.25, bits=3)
        return generate(Transformer(model.config, model.weights, PlainBackend(), policy), ids, 4)

    monkeypatch.setenv("MPCACHE_KERNELS", "torch")
    ref = run()
    monkeypatch.setenv("MPCACHE_KERNELS", "triton")
    out = run()
    assert out.new_ids == ref.new_ids
    for a, b in zip(ref.cache.layers, out.cache.layers, strict=True):
        assert torch.equal(a.state["k_lo"].packed, b.state["k_lo"].packed)


@pytest.mark.parametrize(
    "option", [{"bits": 5}, {"high_bits": 4}, {"importance": "magic"}, {"recent_ratio": 2.0}]
)
def test_bad_options(option):
    with pytest.raises(UserError):
        make_policy("mikv", 0.2, **option)
