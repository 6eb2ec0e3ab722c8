"""Triton quantize+pack / unpack+dequantize vs the PyTorch reference (interpreter on CPU)."""

import pytest
import torch
from kernel_helpers import TOL, needs_cuda, poisoned_empty, rel_err  # noqa: F401

from kernels.quant_ref import (
    QuantizedTensor,
    bits_per_element,
    dequantize_ref,
    quantize_codes,
    quantize_ref,
    unpack_codes,
)
from kernels.quant_triton import dequantize_triton, quantize_triton

# (rows, dim, group): row counts that are and are not multiples of the kernel's row block
SHAPES = [(1, 32, 16), (7, 64, 32), (100, 64, 64), (129, 128, 64), (300, 128, 32)]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("rows,dim,group", SHAPES + [(5, 16, 8), (9, 48, 16), (3, 80, 40)])
def test_pack_unpack_roundtrip_ref(bits, rows, dim, group):
    x = torch.randn(rows, dim) * 4
    qt = quantize_ref(x, bits, group)
    assert qt.packed.shape == (rows, (dim * bits + 31) // 32)
    codes = quantize_codes(x, qt.scale, qt.zero, bits, group)
    assert codes.min() >= 0 and codes.max() < 2**bits
    assert torch.equal(unpack_codes(qt.packed, bits, dim), codes)
    # round to nearest: error at most half a step (+ fp16 rounding of the parameters)
    step = qt.scale.float().repeat_interleave(group, -1)
    assert ((dequantize_ref(qt) - x).abs() <= 0.5 * step + 2e-3 * x.abs().amax()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("rows,dim,group", SHAPES)
def test_quantize_triton_matches_ref(poisoned_empty, dtype, bits, rows, dim, group):  # noqa: F811
    x = (torch.randn(rows, dim) * 3 + torch.randn(rows, 1)).to(dtype)
    ref, out = quantize_ref(x, bits, group), quantize_triton(x, bits, group)
    assert torch.equal(out.scale, ref.scale) and torch.equal(out.zero, ref.zero)
    assert torch.equal(out.packed, ref.packed)
    assert rel_err(dequantize_ref(out), dequantize_ref(ref)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("rows,dim,group", SHAPES)
def test_dequantize_triton_matches_ref(poisoned_empty, dtype, bits, rows, dim, group):  # noqa: F811
    qt = quantize_ref(torch.randn(2, rows, dim), bits, group)
    out = dequantize_triton(qt, dtype)
    assert out.shape == (2, rows, dim) and out.dtype == dtype
    assert rel_err(out, dequantize_ref(qt, dtype)) <= TOL[dtype]


def test_constant_group_is_exact():
    x = torch.full((3, 64), 1.5)
    qt = quantize_triton(x, 4, 32)
    assert torch.equal(dequantize_ref(qt), x)


def test_stored_bytes_match_formula():
    rows, dim, group = 1000, 64, 32
    for bits in (2, 3, 4, 8):
        qt = quantize_ref(torch.randn(rows, dim), bits, group)
        assert qt.nbytes * 8 == rows * dim * bits_per_element(0.0, 16, bits, group)


def test_bad_layouts_rejected():
    with pytest.raises(ValueError, match="bits"):
        quantize_ref(torch.randn(4, 64), 5, 32)
    with pytest.raises(ValueError, match="group"):
        quantize_ref(torch.randn(4, 64), 4, 24)


def test_quantized_tensor_rows_ops():
    qt = quantize_ref(torch.randn(3, 10, 64), 4, 32)
    both = QuantizedTensor.cat([qt, qt.map(lambda t: t[:, :4])], dim=1)
    assert both.rows == 14
    assert torch.equal(dequantize_ref(both)[:, 10:], dequantize_ref(qt)[:, :4])


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_quant_kernels_on_gpu(bits):
    x = torch.randn(4097, 128, device="cuda", dtype=torch.float16)
    ref, out = quantize_ref(x, bits, 64), quantize_triton(x, bits, 64)
    # GPU division may round a code on a .5 boundary the other way: allow a few such codes
    mismatched = (unpack_codes(out.packed, bits, 128) != unpack_codes(ref.packed, bits, 128)).float().mean()
    assert mismatched < 1e-3
    assert rel_err(dequantize_triton(ref, torch.float16), dequantize_ref(ref, torch.float16)) <= 1e-2
