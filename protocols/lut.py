"""exp(-y) for a secret y >= 0 in two rounds, from the dealer's one-hot digit tables.

y (plus a small offset ``approx.EXP_OFFSET`` that absorbs the +-2^-8 error of a dealer max or sign)
is taken at ``approx.EXP_FRAC_BITS`` fractional bits and split into two 9-bit digits of
y_int = floor((y + offset) * 2^F) < 2^18 (so y < 256). With c = y_int + r opened:

    y0 = (c0 - r0) mod 2^9,  b = [c0 < r0] (the borrow),  y1 = (c1 - r1 - b) mod 2^9
    exp(-y) = T0[y0] * T1[y1],  T0[u] = exp(-(u + 1/2) / 2^F + offset),  T1[u] = exp(-u 2^9 / 2^F)

T0[y0], b * T0[y0], T1[(c1 - r1) mod] and T1[(c1 - 1 - r1) mod] are sums of one-hot table entries at
public indices (local), so exp(-y) = T0[y0] * A + (b T0[y0]) * (B - A) is two products in one round.
``mpcache.approx.exp_table`` is the plaintext twin.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from mpcache import approx
from protocols import trunc
from protocols.digits import DigitSpec, digits_of

SPEC = DigitSpec(0, 2, 9)
SCALE = 16  # fractional bits of the tables and of the result


@lru_cache(maxsize=4)
def tables(frac_bits: int, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    n = 1 << SPEC.digit_bits
    u = torch.arange(n, dtype=torch.float64)
    t0 = torch.exp(-(u + 0.5) / 2**frac_bits + offset)
    t1 = torch.exp(-u * n / 2**frac_bits)
    return (t0 * 2**SCALE).round().long(), (t1 * 2**SCALE).round().long()


def rotated(table: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """[..., N]: entry u is table[(c - u) mod N] (int64)."""
    n = table.shape[0]
    return table[(c.unsqueeze(-1) - torch.arange(n)) % n]


def exp_neg_share(share: torch.Tensor, dealer, rank: int, in_bits: int = 16) -> torch.Tensor:
    """Share of exp(-y) at 16 fractional bits, y shared at ``in_bits`` (y >= -offset, y < 256)."""
    from protocols.nonlinear import _mpc_from_share, _ring_mul, _trunc

    f = approx.EXP_FRAC_BITS
    handle, r_share = dealer.cmp_begin(tuple(share.shape), SPEC, with_m=False)
    # c = y_int + r: the truncation to f bits is folded into this opening (protocols.trunc)
    c = trunc.open_shifted(share, r_share, in_bits - f, rank, int(round(approx.EXP_OFFSET * 2**f)))
    t0, t1 = tables(f, approx.EXP_OFFSET)
    e0, e0b, a, b = dealer.lut_select(handle, digits_of(c, SPEC), t0, t1)
    left = _mpc_from_share(torch.stack([e0, e0b]), 0)
    right = _mpc_from_share(torch.stack([a, b - a]), 0)
    prods = _ring_mul(left, right)  # at 2 * SCALE fractional bits
    return _mpc_from_share(_trunc(prods[0] + prods[1], SCALE), 16)


# --- the dealer's part (called through LocalDealer / TTPDealer.lut_select) ------------------------


@lru_cache(maxsize=8)
def _line_sums(table_key: tuple) -> tuple[torch.Tensor, ...]:
    """For party 1's TFP shares a + b*u of a one-hot table: per public c, the sums over u of
    T[(c - u) mod N], u T[(c - u) mod N], and the same over u > c only."""
    table = torch.tensor(table_key, dtype=torch.int64)
    n = table.shape[0]
    c = torch.arange(n)
    rot = rotated(table, c)  # [N (c), N (u)]
    u = torch.arange(n)
    above = (u[None, :] > c[:, None]).to(torch.int64)
    return rot.sum(-1), (rot * u).sum(-1), (rot * above).sum(-1), (rot * u * above).sum(-1)


def line_select(a: torch.Tensor, b: torch.Tensor, c_digits: torch.Tensor, t0: torch.Tensor,
                t1: torch.Tensor) -> list[torch.Tensor]:
    """Party 1's shares (TFP) of E0, b E0, A, B when its table shares are the lines a + b*u."""
    s0, p0, q0, r0 = _line_sums(tuple(t0.tolist()))
    s1, p1, _, _ = _line_sums(tuple(t1.tolist()))
    c0, c1 = c_digits[..., 0], c_digits[..., 1]
    n = t1.shape[0]
    a0, b0, a1, b1 = a[..., 0], b[..., 0], a[..., 1], b[..., 1]
    c1m = (c1 - 1) % n
    return [a0 * s0[c0] + b0 * p0[c0], a0 * q0[c0] + b0 * r0[c0],
            a1 * s1[c1] + b1 * p1[c1], a1 * s1[c1m] + b1 * p1[c1m]]


def true_select(r: torch.Tensor, c_digits: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor):
    """The values E0, b E0, A, B (party 0 under TFP knows r)."""
    n = 1 << SPEC.digit_bits
    r_d = digits_of(r, SPEC)
    c0, c1, r0, r1 = c_digits[..., 0], c_digits[..., 1], r_d[..., 0], r_d[..., 1]
    e0 = t0[(c0 - r0) % n]
    return [e0, e0 * (r0 > c0), t1[(c1 - r1) % n], t1[(c1 - 1 - r1) % n]]


def table_select(onehot: torch.Tensor, c_digits: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor):
    """E0, b E0, A, B from full table shares onehot [..., 2, N] (TTP)."""
    n = t0.shape[0]
    c0, c1 = c_digits[..., 0], c_digits[..., 1]
    rot0 = rotated(t0, c0)
    above = (torch.arange(n) > c0.unsqueeze(-1)).to(torch.int64)
    s0 = onehot[..., 0, :]
    return [(s0 * rot0).sum(-1), (s0 * rot0 * above).sum(-1),
            (onehot[..., 1, :] * rotated(t1, c1)).sum(-1),
            (onehot[..., 1, :] * rotated(t1, (c1 - 1) % n)).sum(-1)]

