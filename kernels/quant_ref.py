"""Per-token asymmetric round-to-nearest quantization with bit packing: the PyTorch reference.

Layout (shared with the Triton kernels in ``quant_triton.py``):

* the last dim ``d`` of ``x`` is split into groups of ``group`` values; each group has a scale and a
  zero point (its minimum), both stored as fp16 -> the ``32/g`` bits per element of MiKV's formula;
* codes ``q = clamp(floor((x - zero) / scale + 0.5), 0, 2^bits - 1)``;
* the codes of a row form one little-endian bit stream stored as ``ceil(d*bits/32)`` int32 words:
  code ``i`` occupies stream bits ``[i*bits, (i+1)*bits)``. This packs int2/int4/int8 and int3
  alike (an int3 code may straddle two words); when ``d`` is a multiple of 32 no bit is wasted and
  every 32 codes fill exactly ``bits`` words (the Triton kernels rely on that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (2, 3, 4, 8)


@dataclass
class QuantizedTensor:
    """Packed codes [..., ceil(d*bits/32)] int32 plus fp16 scale and zero [..., d/group]."""

    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group: int
    dim: int

    @property
    def rows(self) -> int:
        """Length of the second-to-last dim (tokens, for a KV tier [H, n, ...])."""
        return self.packed.shape[-2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scale, self.zero))

    def map(self, fn) -> QuantizedTensor:
        """Apply a row-wise op (index, slice) to the three stored tensors alike."""
        parts = fn(self.packed), fn(self.scale), fn(self.zero)
        return QuantizedTensor(*parts, self.bits, self.group, self.dim)

    @staticmethod
    def cat(parts: list[QuantizedTensor], dim: int) -> QuantizedTensor:
        first = parts[0]
        return QuantizedTensor(
            torch.cat([p.packed for p in parts], dim), torch.cat([p.scale for p in parts], dim),
            torch.cat([p.zero for p in parts], dim), first.bits, first.group, first.dim,
        )


def check_layout(dim: int, bits: int, group: int) -> None:
    """Raise ValueError for a layout neither the reference nor the kernels can store."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    if group < 1 or dim % group:
        raise ValueError(f"group {group} must divide the last dim {dim}")


def supported(dim: int, group: int) -> bool:
    """Shapes the Triton kernels handle (power-of-two dim >= 32 and group); others use the reference."""
    return dim >= 32 and dim & (dim - 1) == 0 and group & (group - 1) == 0 and dim % group == 0


def group_params(x: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 scale and zero per group, [..., d/group]."""
    xg = x.float().unflatten(-1, (-1, group))
    lo, hi = xg.amin(-1), xg.amax(-1)
    return ((hi - lo) / (2**bits - 1)).half(), lo.half()


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group: int):
    """Integer codes [..., d] (int64) using the stored fp16 parameters, as the kernel does."""
    xg = x.float().unflatten(-1, (-1, group))
    s, z = scale.float()[..., None], zero.float()[..., None]
    inv = torch.where(s > 0, 1.0 / torch.where(s > 0, s, 1.0), 0.0)  # constant group: code 0
    q = torch.floor((xg - z) * inv + 0.5).clamp(0, 2**bits - 1)
    return q.flatten(-2).to(torch.int64)


def words_per_row(dim: int, bits: int) -> int:
    return (dim * bits + 31) // 32


def pack_codes(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes [..., d] -> int32 words [..., ceil(d*bits/32)] (layout in the module docstring)."""
    per_word = 32 // bits
    if 32 % bits == 0 and q.shape[-1] % per_word == 0:  # fast path: no code straddles two words
        shifts = torch.arange(per_word, dtype=torch.int64, device=q.device) * bits
        word = (q.unflatten(-1, (-1, per_word)) << shifts).sum(-1)
        return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)
    pos = torch.arange(q.shape[-1], dtype=torch.int64, device=q.device) * bits
    words = []
    for w in range(words_per_row(q.shape[-1], bits)):
        shift = pos - 32 * w
        left = q << shift.clamp(min=0, max=31)
        right = q >> (-shift).clamp(min=0, max=63)
        part = torch.where(shift >= 0, left, right)
        part = torch.where(shift < 32, part & 0xFFFFFFFF, torch.zeros_like(part))
        words.append(part.sum(-1))  # disjoint bits: the sum is an OR
    word = torch.stack(words, -1)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def unpack_codes(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words [..., ceil(dim*bits/32)] -> codes [..., dim] (int64)."""
    per_word = 32 // bits
    if 32 % bits == 0 and dim % per_word == 0:  # fast path: no code straddles two words
        # int32 arithmetic shifts are fine: sign bits only reach positions >= 32 - shift >= bits
        shifts = torch.arange(per_word, dtype=torch.int32, device=packed.device) * bits
        return ((packed[..., None] >> shifts) & (2**bits - 1)).flatten(-2).to(torch.int64)
    words = packed.to(torch.int64) & 0xFFFFFFFF
    pos = torch.arange(dim, device=packed.device) * bits
    lo_idx = pos // 32
    straddles = (pos % 32 + bits > 32) & (lo_idx + 1 < packed.shape[-1])
    lo = words[..., lo_idx]
    hi = words[..., (lo_idx + 1).clamp(max=packed.shape[-1] - 1)]
    hi = torch.where(straddles, hi, torch.zeros_like(lo))
    return ((lo | (hi << 32)) >> (pos % 32)) & (2**bits - 1)


def quantize_ref(x: torch.Tensor, bits: int, group: int) -> QuantizedTensor:
    """Quantize the last dim of ``x`` in groups and pack the codes."""
    check_layout(x.shape[-1], bits, group)
    scale, zero = group_params(x, bits, group)
    q = quantize_codes(x, scale, zero, bits, group)
    return QuantizedTensor(pack_codes(q, bits), scale, zero, bits, group, x.shape[-1])


def dequantize_ref(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unpack and dequantize: ``code * scale + zero`` -> [..., d]."""
    q = unpack_codes(qt.packed, qt.bits, qt.dim).float().unflatten(-1, (-1, qt.group))
    x = q * qt.scale.float()[..., None] + qt.zero.float()[..., None]
    return x.flatten(-2).to(dtype)


def bits_per_element(ratio_high: float, bits_high: int, bits_low: int, group: int) -> float:
    """MiKV's cache size per element: r*b_hi + (1-r)*(b_lo + 32/g) (fp16 scale + zero per group);
    a quantized high tier (b_hi < 16) carries the same 32/g."""
    high = bits_high + (32.0 / group if bits_high < 16 else 0.0)
    return ratio_high * high + (1.0 - ratio_high) * (bits_low + 32.0 / group)
