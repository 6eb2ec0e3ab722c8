"""The fixed masks B a dealer keeps by key (``protocols.ring.dealer``: party 0 under TFP, the TTP
process under TTP), and the products C = A ∘ B[key] it deals from them."""

from __future__ import annotations

import torch


def wants_transposed(kind: str, a_shape, b: torch.Tensor, view: tuple | None = None) -> bool:
    """Whether a product uses the contiguous transpose of a large 2-D fixed operand (the embedding
    table): worth its memory for many rows (a prefill), not for one token's row."""
    rows = 1
    for n in tuple(a_shape)[:-1]:
        rows *= n
    return view is None and kind == "matmul" and b.dim() == 2 and b.shape[0] > 4096 and rows > 1


def viewed(b: torch.Tensor, view: tuple | None) -> torch.Tensor:
    """``b`` seen through ``view`` = (shape, stride, offset) (see ``FixedOperand.viewed``)."""
    if view is None:
        return b
    shape, stride, offset = view
    return b.as_strided(shape, stride, b.storage_offset() + offset)


class FixedMasks:
    """B by key, and the transpose of a large B built once for the products that want it.

    Every change of B[key] drops its transpose: a dealer that serves a second setup (a second
    bench preset, a new chat session) sees the same keys again, and a stale transpose dealt
    C = A ∘ B_old (a SmolLM2 prefill decoded nonsense)."""

    def __init__(self) -> None:
        self._b: dict[int, torch.Tensor] = {}
        self._t: dict[int, torch.Tensor] = {}

    def set(self, key: int, b: torch.Tensor) -> None:
        self._b[key] = b
        self._t.pop(key, None)

    def extend(self, key: int, rows: torch.Tensor, dim: int) -> None:
        self.set(key, torch.cat([self._b[key], rows], dim=dim))

    def forget(self, key: int) -> None:
        self._b.pop(key, None)
        self._t.pop(key, None)

    def view(self, key: int, view: tuple | None = None) -> torch.Tensor:
        return viewed(self._b[key], view)

    def operands(self, key: int, kind: str, a_shape, view: tuple | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """B[key] through ``view``, and its contiguous transpose where the product wants it."""
        b = self.view(key, view)
        if not wants_transposed(kind, a_shape, b, view):
            return b, None
        if key not in self._t:
            self._t[key] = b.t().contiguous()
        return b, self._t[key]
