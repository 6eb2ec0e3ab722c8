"""The MPC numerics, in plain torch: what ``PlainBackend(Approximations(exact=False))`` computes.

``protocols/numerics/nonlinear.py`` computes the very same formulas on secret shares (same range
reductions, same initial guesses, same iteration counts), so the plaintext path measures the
accuracy effect of the MPC approximations and the two-party run must agree with it up to
fixed-point rounding. Every function here has a twin of the same name there.

Range reductions compare a value with public powers of 4 (cheap under MPC: one batched
comparison on one scalar per row) and rescale it into [1/4, 1), where a linear initial guess and
a few Newton steps are accurate. SmolLM2's RMSNorm variances span 0.007 .. 1e6, far outside what a
fixed initial guess handles.
"""

from __future__ import annotations

import torch

# Reciprocal of a softmax denominator d >= 1: levels 4^1 .. 4^RECIP_LEVELS (contexts up to 64k).
RECIP_LEVELS = 8
# Inverse square root of an RMSNorm variance: thresholds 4^k for k in [INV_SQRT_KMIN, INV_SQRT_KMAX].
INV_SQRT_KMIN, INV_SQRT_KMAX = -6, 12

# Linear initial guesses y0 = a - b * x on the reduced ranges. "chord": the secant line (v1);
# "minimax": the line with the least maximal relative error (equioscillation), which saves Newton
# steps: 1/x on [1/4, 1): 0.22 (chord 0.56); 1/sqrt(x) on [1/4, 1): 0.086 (chord 0.19); 1/d on
# [1, 2]: 0.059 (chord 0.125).
# With range_step = 1/4 (thresholds 2^(k/4), reduced range [2^-1/4, 1)) the minimax lines are
# accurate to 3.7e-3 (1/x) and 1.4e-3 (1/sqrt(x)): one Newton step gives 1.4e-5 and 3.1e-6.
GUESSES = {
    ("chord", 2.0): {"recip": (5.0, 4.0), "inv_sqrt": (7.0 / 3.0, 4.0 / 3.0), "sigmoid": (1.5, 0.5)},
    ("minimax", 2.0): {"recip": (3.9024390243902, 3.1219512195122), "inv_sqrt": (2.133, 1.219),
                       "sigmoid": (1.4117647058824, 0.4705882352941)},
    ("minimax", 0.25): {"recip": (2.1810001395415, 1.1847489741789), "inv_sqrt": (1.56708, 0.5685),
                        "sigmoid": (1.4117647058824, 0.4705882352941)},
}


def guess(kind: str, initial_guess: str, step: float = 2.0) -> tuple[float, float]:
    """(a, b) of the initial guess a - b*x on the reduced range [2^-step, 1) (sigmoid: on [1, 2])."""
    if (initial_guess, step) not in GUESSES:
        raise ValueError(f"no {initial_guess!r} initial guess for range step {step} "
                         f"(have {sorted(GUESSES)})")
    return GUESSES[initial_guess, step][kind]


def recip_thresholds(step: float) -> list[float]:
    """Softmax denominators d >= 1 against 2^(k*step), k = 1 .. up to 2^16 (contexts up to 64k)."""
    return [2.0 ** (k * step) for k in range(1, round(16 / step) + 1)]


def inv_sqrt_powers(step: float) -> tuple[int, int]:
    """RMSNorm variances against 2^(k*step) for k in [kmin, kmax] (2^-12 .. 2^24)."""
    return round(2 * INV_SQRT_KMIN / step), round(2 * INV_SQRT_KMAX / step)


# exp(-y) by the dealer's digit tables (protocols/numerics/lut.py): y + EXP_OFFSET at EXP_FRAC_BITS bits.
EXP_FRAC_BITS = 10
EXP_OFFSET = 2.0**-6  # > the 2^-8 error of a max or sign from dealer comparisons: y never < 0


def exp_table(y: torch.Tensor) -> torch.Tensor:
    """exp(-y) for 0 <= y < 256 - offset as the digit tables compute it: y quantised (floor) at
    2^-EXP_FRAC_BITS, evaluated at the middle of its interval."""
    return _exp_table_(y + EXP_OFFSET)


def _exp_table_(t: torch.Tensor) -> torch.Tensor:
    """``exp_table`` of t - offset, in place on t (a fresh tensor; the same operations in the same
    order, so the same values: at L = 2000 these are 36M-element tensors, 30 layers)."""
    q = t.mul_(2**EXP_FRAC_BITS).floor_()
    return q.add_(0.5).neg_().div_(2**EXP_FRAC_BITS).add_(EXP_OFFSET).exp_()


def exp_neg(y: torch.Tensor, iterations: int, method: str) -> torch.Tensor:
    """exp(-y) for y >= 0 by the named method ("limit" or "table")."""
    if method == "table":
        return exp_table(y)
    if method != "limit":
        raise ValueError(f"unknown exp method {method!r} (limit or table)")
    return exp_limit(-y, iterations)


def exp_limit(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """exp(x) ~ (1 + x / 2^n)^(2^n): n squarings. Accurate for x <= 0 down to about -2^n."""
    y = 1.0 + x / (2**iterations)
    for _ in range(iterations):
        y = y * y
    return y


def count_at_least(x: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    """How many thresholds each entry of x reaches (x's dtype): one comparison with all of them
    (thresholds rounded to x's dtype, as a Python scalar compared with x is)."""
    t = torch.tensor(thresholds, dtype=x.dtype)
    return (x.unsqueeze(-1) >= t).sum(-1).to(x.dtype)


def reciprocal_at_least_one(d: torch.Tensor, iterations: int, initial_guess: str = "chord",
                            step: float = 2.0) -> torch.Tensor:
    """1/d for d >= 1: the level j with 2^(j step) <= d < 2^((j+1) step) (4^j with step 2), then
    Newton on d / 2^((j+1) step) in [2^-step, 1)."""
    j = count_at_least(d, recip_thresholds(step))
    scale = 2.0 ** ((j + 1) * step)
    dn = d / scale
    a, b = guess("recip", initial_guess, step)
    y = a - b * dn
    for _ in range(iterations):
        y = y * (2.0 - dn * y)
    return y / scale


def inv_sqrt(v: torch.Tensor, iterations: int, initial_guess: str = "chord",
             step: float = 2.0) -> torch.Tensor:
    """1/sqrt(v) for v > 0: v / 2^(p step) lands in [2^-step, 1) (p from comparisons with
    2^(k step); 4^k with step 2), Newton there."""
    kmin, kmax = inv_sqrt_powers(step)
    p = kmin + count_at_least(v, [2.0 ** (k * step) for k in range(kmin, kmax + 1)])
    vn = v / 2.0 ** (p * step)
    a, b = guess("inv_sqrt", initial_guess, step)
    y = a - b * vn
    for _ in range(iterations):
        y = y * (3.0 - vn * y * y) / 2.0
    return y / 2.0 ** (p * step / 2)


def sigmoid(x: torch.Tensor, exp_iterations: int, iterations: int,
            initial_guess: str = "chord", exp_method: str = "limit") -> torch.Tensor:
    """sigma(x) from u = exp(-|x|) in (0, 1]: 1/(1+u) by Newton from its chord; sign by comparison."""
    positive = (x > 0).to(x.dtype)
    t = x * (2.0 * positive - 1.0)  # |x|
    den = 1.0 + exp_neg(t, exp_iterations, exp_method)
    a, b = guess("sigmoid", initial_guess)
    y = a - b * den
    for _ in range(iterations):
        y = y * (2.0 - den * y)
    return (1.0 - y) + positive * (2.0 * y - 1.0)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, iterations: int,
             initial_guess: str = "chord", step: float = 2.0) -> torch.Tensor:
    variance = x.pow(2).mean(-1, keepdim=True) + eps
    return x * inv_sqrt(variance, iterations, initial_guess, step) * weight


def fill_masked(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked entries take the value of the row's first allowed entry: the row max is unchanged, and
    nothing is exponentiated far below it (exp by limit explodes there)."""
    first = first_allowed(mask).expand(scores.shape[:-1])  # before expanding the mask: no copy
    ref = torch.gather(scores, -1, first[..., None])
    return torch.where(mask.expand(scores.shape), scores, ref)


def first_allowed(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first True entry of each row (0 for an all-False row)."""
    return mask.to(torch.int64).argmax(dim=-1)


def softmax(
    scores: torch.Tensor, mask: torch.Tensor | None, exp_iterations: int, recip_iterations: int,
    clip: float, initial_guess: str = "chord", exp_method: str = "limit", step: float = 2.0,
) -> torch.Tensor:
    if mask is not None:
        scores = fill_masked(scores, mask)
    shifted = scores - scores.max(dim=-1, keepdim=True).values
    if clip > 0:
        shifted = shifted.clamp_(min=-clip)
    if exp_method == "table":  # in place on the fresh ``shifted`` (the same values as exp_neg's)
        e = _exp_table_(shifted.neg_().add_(EXP_OFFSET))
    else:
        e = exp_neg(-shifted, exp_iterations, exp_method)
    if mask is not None:
        e = e.mul_(mask)
    return e.mul_(reciprocal_at_least_one(e.sum(-1, keepdim=True), recip_iterations, initial_guess, step))
