"""Secret operands whose Beaver mask is opened once (mask reuse, DESIGN §5).

``FixedOperand`` holds, for a secret W: this party's share of the dealer's mask B and the public
e = W - B (opened once, when the operand is created or extended). A product x∘W then costs one
opening of d = x - A, the fresh operand only:

    x∘W = (A + d)∘(B + e) = C + d∘B + A∘e + d∘e,   with C = A∘B from the dealer.

Weights are fixed for the whole session; a cached key/value block is extended by its new rows at
each step (only the new rows are masked and opened).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from protocols.ring.dealer import apply
from protocols.ring.fixed_masks import wants_transposed
from protocols.ring.shares import open_ring


@dataclass
class FixedOperand:
    key: int
    mask_share: torch.Tensor  # this party's share of B (int64 ring)
    opened: torch.Tensor  # e = W - B, public (int64 ring, fixed-point encoded)
    name: str = ""
    transposed: tuple[torch.Tensor, torch.Tensor] | None = None  # (B^T, e^T) contiguous, lazily
    view: tuple | None = None  # (shape, stride, offset) into the contiguous registered operand

    def viewed(self, shape, stride, offset: int) -> FixedOperand:
        """The same mask seen through a view of the operand (a slice, a cluster-major reshape): a
        product with it opens only the other operand; the dealer applies the same view to B."""
        if self.view is not None:
            raise ValueError("a view of a view of a fixed operand is not supported")
        view = (tuple(shape), tuple(stride), int(offset))
        return FixedOperand(self.key, _strided(self.mask_share, view), _strided(self.opened, view),
                            self.name, view=view)

    def for_kind(self, kind: str, a_shape=(2, 1)) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Contiguous transposes for a "matmul" of many rows by a large 2-D operand (the embedding
        table; see ``dealer.wants_transposed``)."""
        if not wants_transposed(kind, a_shape, self.opened, self.view):
            return None, None
        if self.transposed is None:
            self.transposed = (self.mask_share.t().contiguous(), self.opened.t().contiguous())
        return self.transposed

    @property
    def shape(self) -> torch.Size:
        return self.opened.shape


def _strided(t: torch.Tensor, view: tuple) -> torch.Tensor:
    shape, stride, offset = view
    return t.as_strided(shape, stride, t.storage_offset() + offset)


def make_fixed(dealer, share: torch.Tensor, name: str = "") -> FixedOperand:
    """Mask the secret ring tensor whose share is ``share``; opens e = W - B (setup traffic).
    B and e are contiguous (so views of the operand map onto them by strides)."""
    key, b_share = dealer.new_mask(share.shape)
    b_share = b_share.contiguous()
    return FixedOperand(key, b_share, open_ring(share - b_share).contiguous(), name)


def extend_fixed(dealer, fixed: FixedOperand, new_share: torch.Tensor, dim: int) -> FixedOperand:
    """Append rows to a fixed operand (a growing KV cache): masks and opens only the new rows."""
    b_new = dealer.extend_mask(fixed.key, new_share.shape, dim)
    if fixed.view is not None:
        raise ValueError("cannot extend a view of a fixed operand")
    e_new = open_ring(new_share - b_new)
    return FixedOperand(
        fixed.key,
        torch.cat([fixed.mask_share, b_new], dim=dim),
        torch.cat([fixed.opened, e_new], dim=dim),
        fixed.name,
    )


def fixed_product(dealer, rank: int, x_share: torch.Tensor, fixed: FixedOperand, kind: str) -> torch.Tensor:
    """Share of x∘W at the product of both encodings' scales (caller truncates)."""
    a_share, c_share = dealer.triple(fixed.key, kind, x_share.shape, fixed.shape, fixed.view)
    d = open_ring(x_share - a_share)
    left = a_share + d if rank == 0 else a_share  # party 0 adds the public d∘e
    b_t, e_t = fixed.for_kind(kind, x_share.shape)
    return c_share + apply(kind, d, fixed.mask_share, b_t) + apply(kind, left, fixed.opened, e_t)


def fix_and_multiply(dealer, rank: int, w_share: torch.Tensor, x_share: torch.Tensor, kind: str
                     ) -> tuple[FixedOperand, torch.Tensor]:
    """Mask W (:func:`make_fixed`) and take x∘W in ONE round: e = W - B and d = x - A are opened
    together. Returns (the fixed operand, the share of x∘W at both scales' product)."""
    key, b_share = dealer.new_mask(w_share.shape)
    b_share = b_share.contiguous()
    a_share, c_share = dealer.triple(key, kind, x_share.shape, w_share.shape, None)
    w_masked, x_masked = w_share - b_share, x_share - a_share
    both = open_ring(torch.cat([w_masked.reshape(-1), x_masked.reshape(-1)]))
    e = both[: w_masked.numel()].reshape(w_share.shape).contiguous()
    d = both[w_masked.numel():].reshape(x_share.shape)
    fixed = FixedOperand(key, b_share, e, "selection")
    left = a_share + d if rank == 0 else a_share
    return fixed, c_share + apply(kind, d, b_share) + apply(kind, left, e)
