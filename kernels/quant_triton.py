"""Triton quantize + bit-pack and unpack + dequantize (layout: ``quant_ref``'s docstring).

Rows are independent: one program handles ``BLOCK_R`` rows of ``D`` values. ``D`` and the group
size must be powers of two here (Triton block shapes); the dispatcher falls back to the reference
otherwise. ``_dequant_block`` is shared with the fused attention kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.quant_ref import QuantizedTensor, check_layout, supported


@triton.jit
def _quantize_kernel(
    x_ptr, packed_ptr, scale_ptr, zero_ptr, n_rows, x_stride,
    D: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr, BLOCK_R: tl.constexpr,
):
    levels: tl.constexpr = (1 << BITS) - 1
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n_rows
    cols = tl.arange(0, D)
    x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=rmask[:, None], other=0.0)
    xg = tl.reshape(x.to(tl.float32), [BLOCK_R, D // G, G])
    lo = tl.min(xg, axis=2)
    hi = tl.max(xg, axis=2)
    scale16 = ((hi - lo) / levels).to(tl.float16)
    zero16 = lo.to(tl.float16)
    gcols = tl.arange(0, D // G)
    gofs = rows[:, None] * (D // G) + gcols[None, :]
    tl.store(scale_ptr + gofs, scale16, mask=rmask[:, None])
    tl.store(zero_ptr + gofs, zero16, mask=rmask[:, None])
    s = scale16.to(tl.float32)
    inv = tl.where(s > 0, 1.0 / tl.where(s > 0, s, 1.0), 0.0)  # constant group: code 0
    q = tl.floor((xg - zero16.to(tl.float32)[:, :, None]) * inv[:, :, None] + 0.5)
    q = tl.minimum(tl.maximum(q, 0.0), levels).to(tl.int64)
    q = tl.reshape(q, [BLOCK_R, D // 32, 32])
    i = tl.arange(0, 32)
    chunk = tl.arange(0, D // 32)
    words_per_row: tl.constexpr = D * BITS // 32
    for w in tl.static_range(BITS):
        shift = (i * BITS - 32 * w)[None, None, :]
        left = q << tl.minimum(tl.maximum(shift, 0), 31)
        right = q >> tl.minimum(tl.maximum(-shift, 0), 63)
        part = tl.where(shift >= 0, left, right)
        part = tl.where(shift < 32, part & 0xFFFFFFFF, 0)
        word = tl.sum(part, axis=2)  # disjoint bits: the sum is an OR
        ofs = rows[:, None] * words_per_row + chunk[None, :] * BITS + w
        tl.store(packed_ptr + ofs, word.to(tl.int32), mask=rmask[:, None])


@triton.jit
def _dequant_block(
    packed_ptr, scale_ptr, zero_ptr, rows, rmask, p_stride, s_stride,
    D: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr,
):
    """Dequantized fp32 block [len(rows), D]; row strides in elements."""
    cols = tl.arange(0, D)
    pos = (cols % 32) * BITS
    lo_idx = (cols // 32) * BITS + pos // 32
    straddles = (pos % 32) + BITS > 32
    base = packed_ptr + rows[:, None] * p_stride
    lo = tl.load(base + lo_idx[None, :], mask=rmask[:, None], other=0)
    hi = tl.load(base + lo_idx[None, :] + 1, mask=rmask[:, None] & straddles[None, :], other=0)
    lo64 = lo.to(tl.uint32, bitcast=True).to(tl.uint64)
    hi64 = hi.to(tl.uint32, bitcast=True).to(tl.uint64)
    code = (((hi64 << 32) | lo64) >> (pos % 32).to(tl.uint64)[None, :]) & ((1 << BITS) - 1)
    gofs = rows[:, None] * s_stride + (cols // G)[None, :]
    scale = tl.load(scale_ptr + gofs, mask=rmask[:, None], other=0.0).to(tl.float32)
    zero = tl.load(zero_ptr + gofs, mask=rmask[:, None], other=0.0).to(tl.float32)
    return code.to(tl.float32) * scale + zero


@triton.jit
def _dequantize_kernel(
    packed_ptr, scale_ptr, zero_ptr, out_ptr, n_rows,
    D: tl.constexpr, G: tl.constexpr, BITS: tl.constexpr, BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < n_rows
    x = _dequant_block(packed_ptr, scale_ptr, zero_ptr, rows, rmask, D * BITS // 32, D // G, D, G, BITS)
    cols = tl.arange(0, D)
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], x.to(out_ptr.dtype.element_ty), mask=rmask[:, None])


def _block_rows(dim: int) -> int:
    return max(1, min(64, 4096 // dim))


def quantize_triton(x: torch.Tensor, bits: int, group: int) -> QuantizedTensor:
    d = x.shape[-1]
    check_layout(d, bits, group)
    if not supported(d, group):
        raise ValueError(f"Triton quantize needs power-of-two dim and group, got {d}, {group}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    n = x2.shape[0]
    packed = torch.empty(n, d * bits // 32, dtype=torch.int32, device=x.device)
    scale = torch.empty(n, d // group, dtype=torch.float16, device=x.device)
    zero = torch.empty_like(scale)
    if n:
        block = _block_rows(d)
        _quantize_kernel[(triton.cdiv(n, block),)](
            x2, packed, scale, zero, n, x2.stride(0), D=d, G=group, BITS=bits, BLOCK_R=block
        )
    return QuantizedTensor(
        packed.view(*lead, -1), scale.view(*lead, -1), zero.view(*lead, -1), bits, group, d
    )


def dequantize_triton(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    d = qt.dim
    if not supported(d, qt.group):
        raise ValueError(f"Triton dequantize needs power-of-two dim and group, got {d}, {qt.group}")
    lead = qt.packed.shape[:-1]
    packed = qt.packed.reshape(-1, qt.packed.shape[-1]).contiguous()
    scale = qt.scale.reshape(-1, qt.scale.shape[-1]).contiguous()
    zero = qt.zero.reshape(-1, qt.zero.shape[-1]).contiguous()
    n = packed.shape[0]
    out = torch.empty(n, d, dtype=dtype, device=packed.device)
    if n:
        block = _block_rows(d)
        _dequantize_kernel[(triton.cdiv(n, block),)](
            packed, scale, zero, out, n, D=d, G=qt.group, BITS=qt.bits, BLOCK_R=block
        )
    return out.view(*lead, d)
