"""Public ring arithmetic of the exact truncation (``protocols.ring.trunc``): the dealer's material and
the parties' recombination. Plain int64 tensors read mod 2^64; also the plaintext twin the tests
check over edge cases."""

from __future__ import annotations

import torch


def signed(v: int) -> int:
    """A Python integer mod 2^64 as a signed 64-bit value."""
    v %= 1 << 64
    return v - (1 << 64) if v >= 1 << 63 else v


def consts(d):
    """Per element (d >= 2): floor(2^64 / d) and 2^64 mod d (as signed int64), floor(2^62 / d).
    ``d`` an int (one divisor for all: Python ints, no tensor work) or an int64 tensor."""
    if isinstance(d, int):
        return signed((1 << 64) // d), (1 << 64) % d, (1 << 62) // d
    q64, r64, q62 = torch.empty_like(d), torch.empty_like(d), torch.empty_like(d)
    for v in torch.unique(d).tolist():
        at = d == v
        q64[at], r64[at], q62[at] = signed((1 << 64) // v), (1 << 64) % v, (1 << 62) // v
    return q64, r64, q62


def udiv(c: torch.Tensor, d, q64, r64) -> torch.Tensor:
    """floor(c / d) with c read as an unsigned 64-bit value (the result mod 2^64)."""
    low = torch.div(c, d, rounding_mode="floor")
    high = q64 + torch.div(c + r64, d, rounding_mode="floor")  # c + 2^64 = c + q64 d + r64
    return torch.where(c < 0, high, low)


def material(r: torch.Tensor, d) -> tuple[torch.Tensor, torch.Tensor]:
    """The dealer's (floor(r / d), msb(r)) for its uniform r (unsigned)."""
    q64, r64, _ = consts(d)
    return udiv(r, d, q64, r64), (r < 0).to(torch.int64)


def combine(c: torch.Tensor, d, q_share: torch.Tensor, m_share: torch.Tensor,
            first: bool) -> torch.Tensor:
    """This party's share of floor(x / d) (within one unit) from the opened c = x + K + r."""
    q64, r64, q62 = consts(d)
    wrap_if_m = (c >= 0).to(torch.int64)  # 1 - msb(c)
    out = m_share * wrap_if_m * q64 - q_share
    if first:
        out = out + udiv(c, d, q64, r64) - q62
    return out


