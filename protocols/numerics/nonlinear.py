"""Non-linear functions on CrypTen secret shares: the twins of ``mpcache/core/approx.py``.

Same formulas, same range reductions, same iteration counts, so that the two-party run equals
``PlainBackend(Approximations(exact=False))`` up to fixed-point rounding. Inputs and outputs are
``MPCTensor``s at CrypTen's default encoding (16 fractional bits) unless said otherwise.

Comparisons are CrypTen's ``_ltz`` (a 0/1 ring value at scale 1). Range reductions compare one
scalar per row with public powers of 4, turn the thermometer bits into a one-hot level, and rescale
by an exact power of two per level (a product with the one-hot bit followed by a per-level
truncation), so no precision is lost on values that span many decades.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import crypten
import torch

from mpcache.core import approx
from mpcache.core.approximations import Approximations
from protocols.numerics import digits, lut
from protocols.ring import trunc
from protocols.ring.shares import mpc_from_share, rank, ring_mul
from protocols.ring.tables import spec_for

# Extra fractional bits of a range-reduced reciprocal / inverse square root before it multiplies
# a vector: 1/4096 at 16 bits would keep only 16 levels. 8 more bits keep products well below the
# ring size (local truncation fails with probability ~ value * 2^(32+HI) / 2^64).
HI_BITS = 8


def column_divisors(bits: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact power-of-two factors, divisors) per column for ``trunc_columns``."""
    up = torch.tensor([1 << -b if b < 0 else 1 for b in bits], dtype=torch.int64)
    down = torch.tensor([1 << b if b > 0 else 1 for b in bits], dtype=torch.int64)
    return up, down


def trunc_columns(share: torch.Tensor, bits: list[int]) -> torch.Tensor:
    """``_trunc`` of column j (the last dim) by ``bits[j]``, all columns in one opening (an exact
    power-of-two product, then the exact truncation)."""
    up, down = column_divisors(bits)
    return trunc.divide([(share * up, down)])[0]


@dataclass
class Numerics:
    """The approximation settings and, for dealer comparisons, the dealer."""

    approx: Approximations
    dealer: object | None = None

    def ltz(self, x, kind: str = "value"):
        """[x < 0] (scale 1). ``kind`` names the input's range for dealer comparisons
        (``protocols.numerics.digits.KINDS``); CrypTen's circuit works on the whole ring."""
        if self.approx.comparison == "crypten" or self.dealer is None:
            return x._ltz()
        if self.approx.comparison != "dealer":
            raise ValueError(f"unknown comparison {self.approx.comparison!r} (crypten or dealer)")

        in_bits = int(round(math.log2(x._tensor.encoder.scale)))
        spec = spec_for(kind, self.approx.cmp_digit_bits)
        share = digits.ltz_share(x._tensor.share, spec, self.dealer, rank(), in_bits)
        return mpc_from_share(share, 0)


CRYPTEN = Numerics(Approximations(exact=False))


def ltz(x, nm: Numerics = CRYPTEN, kind: str = "value"):
    """1 where x < 0 else 0 (ring value, scale 1)."""
    return nm.ltz(x, kind)


def exp_neg(y, nm: Numerics = CRYPTEN):
    """exp(-y) for y >= 0 (``approx.exp_neg``): the limit formula, or the dealer's digit tables."""
    if nm.approx.exp_method == "table" and nm.dealer is not None:
        in_bits = int(round(math.log2(y._tensor.encoder.scale)))
        return lut.exp_neg_share(y._tensor.share, nm.dealer, rank(), in_bits, nm.approx.exp_digit_bits)
    return exp_limit(-y, nm.approx.exp_iterations)


def exp_limit(x, iterations: int):
    y = x.div(2**iterations) + 1.0
    for _ in range(iterations):
        y = y.square()
    return y


def one_hot_levels(v, thresholds: list[float], nm: Numerics = CRYPTEN, kind: str = "wide") -> torch.Tensor:
    """Share [..., K+1] (scale 1) of the one-hot level of v [..., 1] among K increasing thresholds:
    level j means thresholds[j-1] <= v < thresholds[j]."""
    diffs = v - torch.tensor(thresholds, dtype=torch.float32)  # [..., K]
    below = ltz(diffs, nm, kind)._tensor.share  # 1 where v < threshold
    ones = torch.ones_like(below[..., :1]) * (1 if rank() == 0 else 0)
    at_least = torch.cat([ones, ones - below, torch.zeros_like(ones)], dim=-1)  # b_{-1}=1 .. b_K=0
    return at_least[..., :-1] - at_least[..., 1:]


def scale_by_level(y, level: torch.Tensor, exponents: list[int], out_bits: int) -> torch.Tensor:
    """Share of y * 2^exponents[level] at ``out_bits`` fractional bits (y at 16 bits, [..., 1])."""
    onehot = mpc_from_share(level, 0)
    prod = ring_mul(y.expand(*level.shape) if y.shape != level.shape else y, onehot)  # 16 bits
    return trunc_columns(prod, [16 - e - out_bits for e in exponents]).sum(-1, keepdim=True)


# Digits of the high-precision factor in ``mul_hi``: x (16 bits) times h (16 + HI_BITS bits) at once
# is a ring value |x h| * 2^(32 + HI_BITS), and its local truncation fails with probability
# |x h| * 2^(HI_BITS - 32) per element (2^-24 at HI_BITS = 8: ~0.2 per 128-token SmolLM2 prefill,
# ~3e-4 per 4-token random:tiny run). h is split into base-2^DIGIT_BITS digits instead; each partial
# product stays near |x h| * 2^24 or |x| * 2^25 before its own truncation.
DIGIT_BITS = 8


def split_digits(share: torch.Tensor, frac_bits: int) -> list[tuple[torch.Tensor, int]]:
    """Shares of digits D_i with h = sum D_i * 2^-f_i exactly in the ring (h at ``frac_bits``).

    The top digit is h truncated to ``frac_bits - k * DIGIT_BITS`` bits (a local truncation of a
    small value); each lower digit is the exact remainder, so a +-1 truncation error only moves a
    unit between digits. Returns (digit share, fractional bits of that digit)."""
    levels = (frac_bits - 1) // DIGIT_BITS  # truncations while bits > DIGIT_BITS
    # All the tops come from h itself, in ONE opening (top_k = h / 2^(k w)); each remainder is exact
    # in the ring whatever the +-1 error of a top.
    tops = trunc.trunc_many([(share, k * DIGIT_BITS) for k in range(1, levels + 1)])
    digits, rest, bits = [], share, frac_bits
    for top in tops:
        digits.append((rest - top * (1 << DIGIT_BITS), bits))  # the remainder, at ``bits``
        rest, bits = top, bits - DIGIT_BITS
    digits.append((rest, bits))
    return digits


def mul_hi(x, hi_share: torch.Tensor, hi_bits: int):
    """x * h where h is shared at ``hi_bits`` fractional bits (broadcast over the last dim).

    One Beaver product of x with the stacked digits of h (x is opened once, as before; the digits
    add a few scalars per row), then one truncation per digit at a small ring value."""
    digits = split_digits(hi_share, hi_bits)
    h = mpc_from_share(torch.stack([d for d, _ in digits]), 0)
    prod = ring_mul(x, h)  # [digits, ..., n]: x * D_i at 16 + f_i fractional bits
    terms = trunc.trunc_many([(prod[i], f) for i, (_, f) in enumerate(digits)])
    return mpc_from_share(torch.stack(terms).sum(0))


def _newton_step(nm: Numerics) -> float:
    if nm.approx.range_step != 2.0:
        raise ValueError("range_step other than 2 (powers of 4) needs iteration='goldschmidt'")
    return 2.0


def reciprocal_at_least_one_hi(d, iterations: int, nm: Numerics = CRYPTEN) -> torch.Tensor:
    """Share of 1/d (d >= 1, [..., 1]) at 16 + HI_BITS fractional bits."""
    levels = approx.RECIP_LEVELS
    level = one_hot_levels(d, [4.0**k for k in range(1, levels + 1)], nm, "count")
    dn = mpc_from_share(scale_by_level(d, level, [-2 * (j + 1) for j in range(levels + 1)], 16))
    a, b = approx.guess("recip", nm.approx.initial_guess, _newton_step(nm))
    y = a - dn * b
    for _ in range(iterations):
        y = y * (2.0 - dn * y)
    return scale_by_level(y, level, [-2 * (j + 1) for j in range(levels + 1)], 16 + HI_BITS)


def inv_sqrt_hi(v, iterations: int, nm: Numerics = CRYPTEN) -> torch.Tensor:
    """Share of 1/sqrt(v) (v > 0, [..., 1]) at 16 + HI_BITS fractional bits."""
    kmin, kmax = approx.INV_SQRT_KMIN, approx.INV_SQRT_KMAX
    level = one_hot_levels(v, [4.0**k for k in range(kmin, kmax + 1)], nm, "wide")
    powers = [kmin + j for j in range(kmax - kmin + 2)]  # v / 4^p in [1/4, 1)
    vn = mpc_from_share(scale_by_level(v, level, [-2 * p for p in powers], 16))
    a, b = approx.guess("inv_sqrt", nm.approx.initial_guess, _newton_step(nm))
    y = a - vn * b
    for _ in range(iterations):
        y = y * (3.0 - vn * y.square()) * 0.5
    return scale_by_level(y, level, [-p for p in powers], 16 + HI_BITS)


def mean_square(x, beaver):
    """mean(x^2) over the last dim (16 bits): x at 10 bits, squared (20 bits, |x^2| <= 2^49 for
    |x| <= 2.2e4), summed, then ONE exact division by 2^4 * n (the old code truncated each square,
    then the sum, locally)."""
    x10 = nl_from_ring(trunc.trunc(x._tensor.share, 6), 10)
    total = beaver.square(x10._tensor).share.sum(-1, keepdim=True)  # at 20 bits
    return mpc_from_share(trunc.divide([(total, 16 * x.shape[-1])])[0])


def nl_from_ring(share: torch.Tensor, bits: int):
    return mpc_from_share(share, bits)


def sigmoid(x, nm: Numerics = CRYPTEN):
    a = nm.approx
    positive = 1 - ltz(x, nm)  # scale 1
    t = x * (positive * 2 - 1)
    den = exp_neg(t, nm) + 1.0
    g0, g1 = approx.guess("sigmoid", a.initial_guess)
    y = g0 - den * g1
    for _ in range(a.sigmoid_iterations):
        y = y * (2.0 - den * y)
    return (1.0 - y) + positive * (y * 2.0 - 1.0)


def tree_max(x, with_index: bool = False, nm: Numerics = CRYPTEN):
    """Max over the last dim by a tournament: n-1 comparisons, ceil(log2 n) rounds of them.
    With ``with_index`` also the secret index of the first maximum (torch.argmax's tie rule)."""
    n = x.shape[-1]
    idx = None
    if with_index:
        idx = crypten.cryptensor(torch.arange(n, dtype=torch.float32).expand(x.shape).contiguous(), src=0)
    while n > 1:
        m = n // 2
        left, right = x[..., 0 : 2 * m : 2], x[..., 1 : 2 * m : 2]
        take_right = ltz(left - right, nm)  # 1 where left < right; ties keep the left (lower index)
        if with_index:
            il, ir = idx[..., 0 : 2 * m : 2], idx[..., 1 : 2 * m : 2]
            delta = crypten.stack([right - left, ir - il])
            picked = delta * take_right.unsqueeze(0)
            new_x, new_idx = left + picked[0], il + picked[1]
        else:
            new_x = left + (right - left) * take_right
        if n % 2:
            new_x = crypten.cat([new_x, x[..., n - 1 :]], dim=-1)
            if with_index:
                new_idx = crypten.cat([new_idx, idx[..., n - 1 :]], dim=-1)
        x = new_x
        if with_index:
            idx = new_idx
        n = x.shape[-1]
    return (x, idx) if with_index else x


def group_max(x, with_index: bool = False, nm: Numerics = CRYPTEN, arity: int | None = None):
    """Max over the last dim by all-pairs comparisons in groups of ``arity`` (g; default
    ``nm.approx.max_arity``):
    each level is one comparison layer (g(g-1)/2 per group), one equality test per element (the
    winner beats the g-1 others: [wins == g-1], a dealer table lookup) and one selection product,
    so the depth is ceil(log_g n) levels instead of ceil(log2 n). Ties go to the lower index."""
    g_max = arity or nm.approx.max_arity
    idx = None
    if with_index:
        idx = crypten.cryptensor(torch.arange(x.shape[-1], dtype=torch.float32).expand(x.shape).contiguous(),
                                 src=0)
    while x.shape[-1] > 1:
        n = x.shape[-1]
        g = min(g_max, n)
        full = n // g * g
        groups = x[..., :full].reshape(*x.shape[:-1], n // g, g)
        ii, jj = torch.triu_indices(g, g, 1)
        below = ltz(groups[..., ii] - groups[..., jj], nm)._tensor.share  # [x_i < x_j], i < j
        one = 1 if rank() == 0 else 0
        wins = torch.zeros(*below.shape[:-1], g, dtype=torch.int64)
        wins.index_add_(-1, ii, one - below)  # i beats j (ties: the lower index wins)
        wins.index_add_(-1, jj, below)
        winner = digits.equals_share(wins, g - 1, max(1, (g - 1).bit_length()), nm.dealer, rank())
        onehot = mpc_from_share(winner, 0)
        parts = [groups]
        if with_index:
            parts.append(idx[..., :full].reshape(groups.shape))
        picked = (crypten.stack(parts) * onehot.unsqueeze(0)).sum(-1)
        new_x = picked[0]
        if full < n:
            new_x = crypten.cat([new_x, x[..., full:]], dim=-1)
        if with_index:
            new_idx = picked[1]
            idx = crypten.cat([new_idx, idx[..., full:]], dim=-1) if full < n else new_idx
        x = new_x
    return (x, idx) if with_index else x


def row_max(x, with_index: bool = False, nm: Numerics = CRYPTEN):
    """The max (and its index) by the configured tournament: binary, or grouped all-pairs."""
    if nm.approx.max_arity > 2 and nm.approx.comparison == "dealer" and nm.dealer is not None:
        return group_max(x, with_index, nm)
    return tree_max(x, with_index, nm)


