"""exp(-y) for a secret y >= 0 in two rounds, from the dealer's one-hot digit tables.

y (plus a small offset ``approx.EXP_OFFSET`` that absorbs the +-2^-8 error of a dealer max or sign)
is taken at ``approx.EXP_FRAC_BITS`` fractional bits and split into two 9-bit digits of
y_int = floor((y + offset) * 2^F) < 2^18 (so y < 256). With c = y_int + r opened:

    y0 = (c0 - r0) mod 2^9,  b = [c0 < r0] (the borrow),  y1 = (c1 - r1 - b) mod 2^9
    exp(-y) = T0[y0] * T1[y1],  T0[u] = exp(-(u + 1/2) / 2^F + offset),  T1[u] = exp(-u 2^9 / 2^F)

T0[y0], b * T0[y0], T1[(c1 - r1) mod] and T1[(c1 - 1 - r1) mod] are sums of one-hot table entries at
public indices (local), so exp(-y) = T0[y0] * A + (b T0[y0]) * (B - A) is two products in one round.
``mpcache.core.approx.exp_table`` is the plaintext twin.

With ``Approximations.exp_digit_bits = 6`` the same y_int is split into three 6-bit digits: a TTP
dealer then sends 3 x 64 one-hot entries per element instead of 2 x 512 (most of its material in a
prefill), for one more round of products (``_three_digits``). The value is the same product of
exact table entries, so the plaintext twin does not change.
"""

from __future__ import annotations

import torch

from mpcache.core import approx
from protocols.ring import trunc
from protocols.ring.shares import mpc_from_share, ring_mul
from protocols.ring.tables import SCALE, digits_of, exp_spec, tables


def exp_neg_share(share: torch.Tensor, dealer, rank: int, in_bits: int = 16, digit_bits: int = 9
                  ) -> torch.Tensor:
    """Share of exp(-y) at 16 fractional bits, y shared at ``in_bits`` (y >= -offset, y < 256), from
    digits of ``digit_bits`` (9: two digits; 6: three, see ``_three_digits``)."""
    f = approx.EXP_FRAC_BITS
    spec = exp_spec(digit_bits)
    handle, r_share = dealer.cmp_begin(tuple(share.shape), spec, with_m=False)
    # c = y_int + r: the truncation to f bits is folded into this opening (protocols.ring.trunc)
    c = trunc.open_shifted(share, r_share, in_bits - f, rank, int(round(approx.EXP_OFFSET * 2**f)))
    tabs = tables(f, approx.EXP_OFFSET, digit_bits)
    selected = dealer.lut_select(handle, digits_of(c, spec), tabs)
    if spec.digits == 3:
        return _three_digits(*selected)
    e0, e0b, a, b = selected
    left = mpc_from_share(torch.stack([e0, e0b]), 0)
    right = mpc_from_share(torch.stack([a, b - a]), 0)
    prods = ring_mul(left, right)  # at 2 * SCALE fractional bits
    return mpc_from_share(trunc.trunc(prods[0] + prods[1], SCALE), 16)


def _three_digits(e0, e0b, a1, b1, g1, q1, a2, b2) -> torch.Tensor:
    """exp(-y) = T0[y0] T1[y1] T2[y2] from the shares of ``tables.table_select3``'s values, in two
    rounds of products and one truncation:

        X = T0[y0] T1[y1] = E0 A1 + (b0 E0)(B1 - A1),   X b0 = (b0 E0) B1   (b0^2 = b0)
        T2[y2] = Z + b0 W,   Z = A2 + G1 (B2 - A2),   W = Q1 (B2 - A2)
        exp(-y) = X Z + (X b0) W

    X is kept at 2 * SCALE fractional bits (no truncation between the rounds): X Z < 2^49, far
    inside the exact truncation's range."""
    d1, d2 = b1 - a1, b2 - a2
    left = mpc_from_share(torch.stack([e0, e0b, e0b, g1, q1]), 0)
    right = mpc_from_share(torch.stack([a1, d1, b1, d2, d2]), 0)
    p = ring_mul(left, right)  # X's terms at 2 * SCALE, Z's and W's at SCALE (G1, Q1 are bits)
    left = mpc_from_share(torch.stack([p[0] + p[1], p[2]]), 0)
    right = mpc_from_share(torch.stack([a2 + p[3], p[4]]), 0)
    q = ring_mul(left, right)  # at 3 * SCALE
    return mpc_from_share(trunc.trunc(q[0] + q[1], 2 * SCALE), 16)


# --- the dealer's part (called through LocalDealer / TTPDealer.lut_select) ------------------------


