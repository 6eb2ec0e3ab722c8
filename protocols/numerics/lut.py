"""exp(-y) for a secret y >= 0 in two rounds, from the dealer's one-hot digit tables.

y (plus a small offset ``approx.EXP_OFFSET`` that absorbs the +-2^-8 error of a dealer max or sign)
is taken at ``approx.EXP_FRAC_BITS`` fractional bits and split into two 9-bit digits of
y_int = floor((y + offset) * 2^F) < 2^18 (so y < 256). With c = y_int + r opened:

    y0 = (c0 - r0) mod 2^9,  b = [c0 < r0] (the borrow),  y1 = (c1 - r1 - b) mod 2^9
    exp(-y) = T0[y0] * T1[y1],  T0[u] = exp(-(u + 1/2) / 2^F + offset),  T1[u] = exp(-u 2^9 / 2^F)

T0[y0], b * T0[y0], T1[(c1 - r1) mod] and T1[(c1 - 1 - r1) mod] are sums of one-hot table entries at
public indices (local), so exp(-y) = T0[y0] * A + (b T0[y0]) * (B - A) is two products in one round.
``mpcache.core.approx.exp_table`` is the plaintext twin.
"""

from __future__ import annotations

import torch

from mpcache.core import approx
from protocols.ring import trunc
from protocols.ring.shares import mpc_from_share, ring_mul
from protocols.ring.tables import SCALE, SPEC, digits_of, tables


def exp_neg_share(share: torch.Tensor, dealer, rank: int, in_bits: int = 16) -> torch.Tensor:
    """Share of exp(-y) at 16 fractional bits, y shared at ``in_bits`` (y >= -offset, y < 256)."""
    f = approx.EXP_FRAC_BITS
    handle, r_share = dealer.cmp_begin(tuple(share.shape), SPEC, with_m=False)
    # c = y_int + r: the truncation to f bits is folded into this opening (protocols.ring.trunc)
    c = trunc.open_shifted(share, r_share, in_bits - f, rank, int(round(approx.EXP_OFFSET * 2**f)))
    t0, t1 = tables(f, approx.EXP_OFFSET)
    e0, e0b, a, b = dealer.lut_select(handle, digits_of(c, SPEC), t0, t1)
    left = mpc_from_share(torch.stack([e0, e0b]), 0)
    right = mpc_from_share(torch.stack([a, b - a]), 0)
    prods = ring_mul(left, right)  # at 2 * SCALE fractional bits
    return mpc_from_share(trunc.trunc(prods[0] + prods[1], SCALE), 16)


# --- the dealer's part (called through LocalDealer / TTPDealer.lut_select) ------------------------


