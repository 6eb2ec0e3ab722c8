"""Shallower schedules of the same formulas (``Approximations(iteration="goldschmidt")``).

- Newton for 1/d and 1/sqrt(v) run as Goldschmidt's coupled iterations: the same iterates in exact
  arithmetic (g = d*y, h = y resp. y/2), but the two products of a step are independent, so a step
  of 1/d costs one round (Newton: two) and a step of 1/sqrt(v) two (Newton: three).
- The output scale of a range reduction (4^-(j+1) or 2^-p for level j, p) is a local function of
  the one-hot level (public constants times shared bits); the vector is multiplied by it in the
  same round that scales the input into [1/4, 1) (one batched Beaver product), instead of after
  the iterations.
- SiLU: x * sigma(x) = x (1 - y) + (x [x >= 0]) (2y - 1), y = 1/(1 + exp(-|x|)); x [x >= 0] is
  computed with |x| in one round, and the final two products in one round.

``mpcache.core.approx`` computes the same iterates (the plaintext twin needs no change).
"""

from __future__ import annotations

import math

import crypten
import torch
from crypten.mpc.primitives import beaver

from mpcache.core import approx
from protocols.numerics.nonlinear import (
    DIGIT_BITS,
    HI_BITS,
    Numerics,
    column_divisors,
    exp_neg,
    ltz,
    mean_square,
    one_hot_levels,
    split_digits,
)
from protocols.ring import trunc
from protocols.ring.shares import mpc_from_share, ring_mul

OUT_BITS = 16 + HI_BITS  # the scaled vector (x * 2^-p, e * 4^-(j+1)) is kept at 24 bits


def ring_mul_many(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """Exact ring products of several independent (left, right) share pairs in one Beaver round."""
    lefts, rights, shapes = [], [], []
    for a, b in pairs:
        a, b = torch.broadcast_tensors(a, b)
        shapes.append(a.shape)
        lefts.append(a.reshape(-1))
        rights.append(b.reshape(-1))
    flat = ring_mul(mpc_from_share(torch.cat(lefts), 0), mpc_from_share(torch.cat(rights), 0))
    out, start = [], 0
    for shape in shapes:
        n = int(torch.Size(shape).numel())
        out.append(flat[start : start + n].reshape(shape))
        start += n
    return out


SCALE_BITS = 32  # fractional bits of a level's output scale (a local constant; 2^-16 .. 2^6 fit)


def level_digits(level: torch.Tensor, scales: list[float], bits: int) -> list[tuple[torch.Tensor, int]]:
    """``split_digits`` of scales[level] (at ``bits``) without opening anything: level is one-hot,
    so each digit of scales[level] is the same public combination of the level bits as the
    constant itself (the digits of each public constant, picked by the secret one-hot level)."""
    values = [round(c * 2.0**bits) for c in scales]
    out, rest, width = [], values, bits
    while width > DIGIT_BITS:
        top = [v >> DIGIT_BITS for v in rest]
        out.append(([v - t * (1 << DIGIT_BITS) for v, t in zip(rest, top, strict=True)], width))
        rest, width = top, width - DIGIT_BITS
    out.append((rest, width))
    return [((level * torch.tensor(d, dtype=torch.int64)).sum(-1, keepdim=True), w) for d, w in out]


def _scaled_pair(v, x_share: torch.Tensor, level: torch.Tensor, in_scales: list[float],
                 out_scales: list[float]):
    """One round: (v * in_scales[level] at 16 bits, x * out_scales[level] at OUT_BITS).

    A scale c = m 2^e (m in [1, 2)) is applied as an exact power of two, then the mantissa at 16
    bits: every truncated value stays near v c 2^32 <= 2^33."""
    digits = level_digits(level, out_scales, SCALE_BITS)  # local: no truncation, no round
    stacked = torch.stack([d for d, _ in digits])  # [k, ..., 1]
    v_share = v._tensor.share.expand(*level.shape)
    prod_v, prod_x = ring_mul_many([(v_share, level), (x_share.unsqueeze(0), stacked)])
    frexp = [math.frexp(c) for c in in_scales]  # c = m 2^e, m in [1/2, 1)
    mantissas = torch.tensor([round(m * 2.0**17) for m, _ in frexp], dtype=torch.int64)  # 2m at 16 bits
    # v's scaling (power of two and mantissa: ONE division, |v level 2^(16+17)| <= 2^57 for the
    # variances' v < 2^24) and the digit truncations of prod_x go in ONE opening.
    up, down = column_divisors([1 - e for _, e in frexp])
    outs = trunc.divide([(prod_v * up * mantissas, down * (1 << 16))]
                        + [(prod_x[i], 1 << (16 + f - OUT_BITS)) for i, (_, f) in enumerate(digits)])
    return mpc_from_share(outs[0].sum(-1, keepdim=True)), sum(outs[1:])


def times_hi(xs: torch.Tensor, y) -> torch.Tensor:
    """(x at OUT_BITS) * y (an MPCTensor at 16 bits, a few units) -> MPCTensor at 16 bits, one
    round; y is split into 8-bit digits so no truncated value exceeds ~2^34."""
    digits = split_digits(y._tensor.share, 16)
    stacked = mpc_from_share(torch.stack([d for d, _ in digits]), 0)
    prod = ring_mul(mpc_from_share(xs.unsqueeze(0), 0), stacked)
    terms = trunc.trunc_many([(prod[i], OUT_BITS + f - 16) for i, (_, f) in enumerate(digits)])
    return mpc_from_share(sum(terms))


def times_reciprocal(e, d, nm: Numerics):
    """e / d for d >= 1 ([..., 1]), e [..., n] (softmax: the exp values over their sum)."""
    step = nm.approx.range_step
    thresholds = approx.recip_thresholds(step)
    level = one_hot_levels(d, thresholds, nm, "count")
    scales = [2.0 ** (-(j + 1) * step) for j in range(len(thresholds) + 1)]
    dn, es = _scaled_pair(d, e._tensor.share, level, scales, scales)
    a, b = approx.guess("recip", nm.approx.initial_guess, step)
    h = a - dn * b
    g = dn * h
    for step in range(nm.approx.reciprocal_iterations):
        f = 2.0 - g  # 1 + r, r = 1 - d y
        if step == nm.approx.reciprocal_iterations - 1:
            h = h * f
        else:
            g, h = _pair(nl_stack([g, h]) * f)
    return times_hi(es, h)


def rms_norm(x, eps: float, nm: Numerics):
    """x / sqrt(mean(x^2) + eps), as ``nonlinear.rms_norm`` with the shallower schedule."""
    v = mean_square(x, beaver) + eps
    step = nm.approx.range_step
    kmin, kmax = approx.inv_sqrt_powers(step)
    level = one_hot_levels(v, [2.0 ** (k * step) for k in range(kmin, kmax + 1)], nm, "wide")
    powers = [kmin + j for j in range(kmax - kmin + 2)]  # v / 2^(p step) in [2^-step, 1)
    vn, xs = _scaled_pair(v, x._tensor.share, level, [2.0 ** (-p * step) for p in powers],
                          [2.0 ** (-p * step / 2) for p in powers])
    a, b = approx.guess("inv_sqrt", nm.approx.initial_guess, step)
    # y0 = a - vn b and h = y0 / 2 from ONE public product (one truncation, not two in a row)
    both = vn.unsqueeze(0) * torch.tensor([b, b / 2]).reshape(2, *([1] * vn.dim()))
    y0, h = a - both[0], a / 2 - both[1]
    g = vn * y0
    for step in range(nm.approx.inv_sqrt_iterations):
        r = 0.5 - g * h
        if step == nm.approx.inv_sqrt_iterations - 1:
            h = h + h * r
        else:
            g, h = _pair(nl_stack([g, h]) * (r + 1.0))
    return times_hi(xs, h * 2.0)


def silu(x, nm: Numerics):
    a = nm.approx
    positive = 1 - ltz(x, nm)  # scale 1
    t, xp = _pair(x.unsqueeze(0) * nl_stack([positive * 2 - 1, positive]))  # |x|, x [x >= 0]
    den = exp_neg(t, nm) + 1.0
    g0, g1 = approx.guess("sigmoid", a.initial_guess)
    h = g0 - den * g1
    g = den * h
    for step in range(a.sigmoid_iterations):
        f = 2.0 - g
        if step == a.sigmoid_iterations - 1:
            h = h * f
        else:
            g, h = _pair(nl_stack([g, h]) * f)
    return (nl_stack([x, xp]) * nl_stack([1.0 - h, h * 2.0 - 1.0])).sum(0)


def _pair(stacked):
    return stacked[0], stacked[1]


def nl_stack(tensors):
    return crypten.stack(tensors)
