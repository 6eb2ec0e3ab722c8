"""Fused mixed-precision decode attention (Triton) vs the PyTorch reference, and vs plain attention."""

import pytest
import torch
from kernel_helpers import TOL, needs_cuda, poisoned_empty, rel_err  # noqa: F401

from kernels.attention_ref import mixed_decode_attention_ref
from kernels.attention_triton import mixed_decode_attention_triton
from kernels.quant_ref import dequantize_ref, quantize_ref

# (batch, q heads, kv heads, head dim, high tokens, low tokens, bits): GQA groups 1/3/4/7, lengths
# that are not multiples of the token block, one tier empty.
CASES = [
    (1, 9, 3, 64, 37, 101, 4),
    (2, 4, 4, 128, 5, 70, 2),
    (1, 8, 2, 64, 0, 50, 3),
    (1, 8, 2, 64, 33, 0, 4),
    (1, 7, 1, 32, 200, 17, 4),
    (3, 6, 2, 64, 1, 1, 2),
]


def make_inputs(b, hq, hkv, d, n_hi, n_lo, bits, dtype, balance):
    q = torch.randn(b, hq, d).to(dtype)
    k_hi = torch.randn(b, hkv, n_hi, d).to(dtype) if n_hi else None
    v_hi = torch.randn(b, hkv, n_hi, d).to(dtype) if n_hi else None
    k_lo = quantize_ref(torch.randn(b, hkv, n_lo, d) * 2, bits, d // 2) if n_lo else None
    v_lo = quantize_ref(torch.randn(b, hkv, n_lo, d), bits, d // 2) if n_lo else None
    bal = torch.rand(hkv, d) + 0.5 if balance and n_lo else None
    return q, k_hi, v_hi, k_lo, v_lo, bal


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("programs", [1, 16])
def test_mixed_attention_matches_ref(poisoned_empty, case, dtype, programs):  # noqa: F811
    inputs = make_inputs(*case, dtype, balance=case[0] != 2)
    ref, ref_lse = mixed_decode_attention_ref(*inputs, return_lse=True)
    out, lse = mixed_decode_attention_triton(*inputs, target_programs=programs, return_lse=True)
    assert out.shape == ref.shape and out.dtype == dtype
    assert rel_err(out, ref) <= TOL[dtype]
    assert rel_err(lse, ref_lse) <= 1e-4


def test_reference_is_plain_attention_over_dequantized_cache():
    """One softmax over both tiers == SDPA over the concatenated (dequantized) cache."""
    q, k_hi, v_hi, k_lo, v_lo, _ = make_inputs(1, 9, 3, 64, 20, 30, 4, torch.float32, False)
    keys = torch.cat([k_hi, dequantize_ref(k_lo)], 2).repeat_interleave(3, 1)
    values = torch.cat([v_hi, dequantize_ref(v_lo)], 2).repeat_interleave(3, 1)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q[:, :, None], keys, values)[:, :, 0]
    assert rel_err(mixed_decode_attention_ref(q, k_hi, v_hi, k_lo, v_lo), sdpa) <= 1e-5


def test_balance_scores_with_q_over_b():
    """Storing quant(k*b) and scoring with q/b approximates the unbalanced scores."""
    q, k_hi, v_hi, _, _, _ = make_inputs(1, 4, 2, 64, 40, 0, 8, torch.float32, False)
    bal = torch.rand(2, 64) + 0.5
    k_lo, v_lo = quantize_ref(k_hi * bal[None, :, None], 8, 32), quantize_ref(v_hi, 8, 32)
    exact = mixed_decode_attention_ref(q, k_hi, v_hi, None, None)
    assert rel_err(mixed_decode_attention_triton(q, None, None, k_lo, v_lo, bal), exact) < 2e-2


def test_empty_cache_rejected():
    with pytest.raises(ValueError, match="at least one tier"):
        mixed_decode_attention_triton(torch.randn(1, 2, 64), None, None, None, None)


@needs_cuda
@pytest.mark.gpu
def test_mixed_attention_on_gpu():
    inputs = make_inputs(4, 32, 8, 128, 1000, 3001, 4, torch.float16, True)
    inputs = [t if t is None or not isinstance(t, torch.Tensor) else t.cuda() for t in inputs]
    q, k_hi, v_hi, k_lo, v_lo, bal = inputs
    k_lo = k_lo if k_lo is None else k_lo.map(lambda t: t.cuda())
    v_lo = v_lo if v_lo is None else v_lo.map(lambda t: t.cuda())
    out = mixed_decode_attention_triton(q, k_hi, v_hi, k_lo, v_lo, bal)
    assert rel_err(out, mixed_decode_attention_ref(q, k_hi, v_hi, k_lo, v_lo, bal)) <= 1e-2
