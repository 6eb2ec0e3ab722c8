"""The model's nonlinear layers on secret shares (RMSNorm, SiLU, softmax): each picks the
iteration the approximations name, Newton (``nonlinear``) or Goldschmidt (``goldschmidt``)."""

from __future__ import annotations

import torch
from crypten.mpc.primitives import beaver

from mpcache.core import approx
from protocols.numerics import goldschmidt
from protocols.numerics.nonlinear import (
    CRYPTEN,
    HI_BITS,
    Numerics,
    exp_neg,
    inv_sqrt_hi,
    ltz,
    mean_square,
    mul_hi,
    reciprocal_at_least_one_hi,
    row_max,
    sigmoid,
)
from protocols.ring.shares import mpc_from_share


def rms_norm(x, eps: float, nm: Numerics = CRYPTEN):
    """x / sqrt(mean(x^2) + eps) (the gain is applied by the caller, a fixed product).

    Local truncation of a share fails with probability |value| / 2^64, and SmolLM2's massive
    activations (|x| up to ~2.2e4) would make x^2 at 32 fractional bits ~ 2^61. So x is squared at
    10 fractional bits (|x^2| <= 2^49 before the truncation back to 16 bits) and the row sum is
    divided once.
    """
    if nm.approx.iteration == "goldschmidt":
        return goldschmidt.rms_norm(x, eps, nm)
    variance = mean_square(x, beaver) + eps
    return mul_hi(x, inv_sqrt_hi(variance, nm.approx.inv_sqrt_iterations, nm), 16 + HI_BITS)


def silu(x, nm: Numerics = CRYPTEN):
    if nm.approx.iteration == "goldschmidt":
        return goldschmidt.silu(x, nm)
    return x * sigmoid(x, nm)


def softmax(scores, mask: torch.Tensor | None, nm: Numerics = CRYPTEN, max_fn=None):
    """MPC-safe softmax: masked entries copy the row's first allowed score (so the max is exact and
    nothing explodes in exp), the exp is multiplied by the public mask, the sum is >= 1. ``max_fn``
    (x -> the row max [..., 1]) replaces the preset's tournament (the backend's bounded one)."""
    if mask is not None:
        mask = mask.expand(scores.shape)
        first = approx.first_allowed(mask)
        ref = scores.gather(-1, first[..., None])
        keep = mask.to(torch.long)
        share = scores._tensor.share * keep + ref._tensor.share * (1 - keep)
        scores = mpc_from_share(share)
    a = nm.approx
    shifted = scores - (max_fn(scores) if max_fn is not None else row_max(scores, nm=nm))
    if a.softmax_clip > 0:  # max(shifted, -clip) = relu(shifted + clip) - clip
        lifted = shifted + a.softmax_clip
        shifted = lifted * (1 - ltz(lifted, nm)) - a.softmax_clip
    e = exp_neg(-shifted, nm)
    if mask is not None:
        e = mpc_from_share(e._tensor.share * mask.to(torch.long))
    if a.iteration == "goldschmidt":
        return goldschmidt.times_reciprocal(e, e.sum(-1, keepdim=True), nm)
    r = reciprocal_at_least_one_hi(e.sum(-1, keepdim=True), a.reciprocal_iterations, nm)
    return mul_hi(e, r, 16 + HI_BITS)
