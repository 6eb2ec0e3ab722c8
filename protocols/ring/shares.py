"""Secret shares as plain int64 ring tensors: open them, multiply them (Beaver), wrap them as
CrypTen tensors. The numerics work on shares directly to control every truncation and round."""

from __future__ import annotations

import torch
from crypten import communicator
from crypten.encoder import FixedPointEncoder
from crypten.mpc import MPCTensor
from crypten.mpc.primitives import ArithmeticSharedTensor, beaver
from crypten.mpc.ptype import ptype as Ptype


def rank() -> int:
    return communicator.get().get_rank()


def open_ring(share: torch.Tensor) -> torch.Tensor:
    """Open a ring tensor to both parties (one round, each party sends its share)."""
    return communicator.get().all_reduce(share)


def from_share(share: torch.Tensor, precision: int | None = None):
    """``MPCTensor.from_shares(share, precision)`` without the empty sharing (CPU shares)."""
    inner = object.__new__(ArithmeticSharedTensor)
    inner._tensor = share
    inner.encoder = FixedPointEncoder(precision_bits=precision)
    result = object.__new__(MPCTensor)
    result.requires_grad = False
    result._reset_gradients()
    result._tensor = inner
    result.ptype = Ptype.arithmetic
    return result


def mpc_from_share(share: torch.Tensor, scale_bits: int = 16):
    """This party's share as an MPCTensor at ``scale_bits`` fractional bits (no communication)."""
    if share.is_cuda:
        return MPCTensor.from_shares(share, precision=scale_bits)
    return from_share(share, scale_bits)


def ring_mul(x, y) -> torch.Tensor:
    """Share of the exact ring product of two secret tensors (no truncation; scales multiply)."""
    return beaver.mul(x._tensor, y._tensor).share


def ring_mul_shares(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Shares of the exact ring products left * right of two shares (one Beaver round, scale 1)."""
    return ring_mul(mpc_from_share(left, 0), mpc_from_share(right, 0))


def reveal(x, dst: int | None = None) -> torch.Tensor | None:
    """Plain value of a secret tensor (to ``dst`` only, or to both). CrypTen 0.4.1's decoder is off by
    one for values just above a negative integer (-77 + 2^-16 decodes to -78), so decode here."""
    ring = x._tensor.reveal(dst=dst)
    if ring is None:
        return None
    return (ring.double() / x._tensor.encoder.scale).float()
