"""Correlated randomness for products with a *fixed* operand (mask reuse, DESIGN §5).

A fixed operand W (a weight, a cached key/value block) is masked once by a random B known only to
the dealer; e = W - B is opened once. Each later product x∘W needs a fresh random A and the shares
of C = A∘B for the same B; online only d = x - A is opened. ``∘`` is one of ``KINDS``.

Two dealers, chosen by the runtime:
- ``LocalDealer`` (TFP): party 0 draws B and A and computes C itself, then shares them with
  pseudo-random zero sharings (no traffic). Fast; party 0 could unmask everything (not private).
- ``TTPDealer``: CrypTen's trusted third party (a third process) keeps B; each party draws its
  shares of A and B from the generator it shares with the TTP, and party 0 receives its share of C.
  Private against each party in the semi-honest, non-colluding model.
Both parties call every method in the same order with the same shapes (shapes are public).
"""

from __future__ import annotations

import itertools

import torch

from protocols.compat import import_crypten

KINDS = ("matmul", "matmul_t", "mul")


def apply(kind: str, a: torch.Tensor, b: torch.Tensor, b_t: torch.Tensor | None = None) -> torch.Tensor:
    """``a ∘ b`` on ring (int64) tensors; b is the fixed operand. ``b_t``: b transposed, contiguous
    (torch's int64 matmul is ~6x faster when the reduced dim is contiguous in both operands)."""
    if kind == "matmul":
        return a @ b_t.transpose(-1, -2) if b_t is not None else a @ b
    if kind == "matmul_t":
        return a @ b.transpose(-1, -2)
    if kind == "mul":
        return a * b
    raise ValueError(f"unknown product kind {kind!r}")


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


def result_shape(kind: str, a_shape, b_shape) -> torch.Size:
    """Shape of ``a ∘ b`` without computing it (meta tensors)."""
    a = torch.empty(tuple(a_shape), device="meta", dtype=torch.float32)
    b = torch.empty(tuple(b_shape), device="meta", dtype=torch.float32)
    return apply(kind, a, b).shape


def _random_ring(shape, generator=None) -> torch.Tensor:
    crypten = import_crypten()
    from crypten.common.rng import generate_random_ring_element

    del crypten
    return generate_random_ring_element(tuple(shape), generator=generator)


class LocalDealer:
    """TFP: party 0 is the dealer."""

    name = "tfp"

    def __init__(self, rank: int):
        self.rank = rank
        self.masks: dict[int, torch.Tensor] = {}  # key -> B (party 0 only)
        self.masks_t: dict[int, torch.Tensor] = {}  # key -> B^T contiguous, for "matmul" of weights
        self._keys = itertools.count()

    def _share(self, value: torch.Tensor | None, shape) -> torch.Tensor:
        from crypten.mpc.primitives import ArithmeticSharedTensor

        if self.rank == 0:
            return ArithmeticSharedTensor(value, precision=0, src=0).share
        return ArithmeticSharedTensor(None, size=tuple(shape), precision=0, src=0).share

    def new_mask(self, shape) -> tuple[int, torch.Tensor]:
        """A fresh fixed mask B: returns (key, this party's share of B)."""
        key = next(self._keys)
        b = _random_ring(shape) if self.rank == 0 else None
        if b is not None:
            self.masks[key] = b
        return key, self._share(b, shape)

    def extend_mask(self, key: int, shape, dim: int) -> torch.Tensor:
        """Append fresh mask rows along ``dim`` to B[key]; returns this party's share of them."""
        b = _random_ring(shape) if self.rank == 0 else None
        if b is not None:
            self.masks[key] = torch.cat([self.masks[key], b], dim=dim)
        return self._share(b, shape)

    def derive(self, parts: list[tuple], dim: int) -> tuple[int, list[torch.Tensor]]:
        """A new fixed mask made of pieces along ``dim``: ("view", key, view) reuses a view of B[key];
        ("new", shape) draws fresh rows. Returns (key, this party's shares of the fresh pieces)."""
        key = next(self._keys)
        fresh = [_random_ring(p[1]) if self.rank == 0 else None for p in parts if p[0] == "new"]
        if self.rank == 0:
            it = iter(fresh)
            self.masks[key] = torch.cat(
                [viewed(self.masks[p[1]], p[2]) if p[0] == "view" else next(it) for p in parts], dim=dim)
        shapes = [p[1] for p in parts if p[0] == "new"]
        return key, [self._share(b, shape) for b, shape in zip(fresh, shapes, strict=True)]

    def forget(self, key: int) -> None:
        self.masks.pop(key, None)
        self.masks_t.pop(key, None)

    def triple(self, key: int, kind: str, a_shape, b_shape, view: tuple | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shares of a fresh A (shape ``a_shape``) and of C = A ∘ B[key] (B seen through ``view``)."""
        c_shape = result_shape(kind, a_shape, b_shape)
        if self.rank == 0:
            a = _random_ring(a_shape)
            b = viewed(self.masks[key], view)
            b_t = None
            if wants_transposed(kind, a_shape, b, view):  # the embedding table, many rows
                if key not in self.masks_t:
                    self.masks_t[key] = b.t().contiguous()
                b_t = self.masks_t[key]
            c = apply(kind, a, b, b_t)
            return self._share(a, a_shape), self._share(c, c_shape)
        return self._share(None, a_shape), self._share(None, c_shape)


class TTPDealer:
    """CrypTen's trusted third party, extended by :class:`FixedMaskServer` requests."""

    name = "ttp"

    def __init__(self, rank: int):
        from crypten.mpc.provider.ttp_provider import TTPClient

        self.rank = rank
        self.client = TTPClient.get()
        self._keys = itertools.count()

    def _gen(self):
        return self.client.get_generator(device="cpu")

    def _request(self, name: str, *args):
        return self.client.ttp_request(name, None, *args)

    def new_mask(self, shape) -> tuple[int, torch.Tensor]:
        key = next(self._keys)
        share = _random_ring(shape, self._gen())
        if self.rank == 0:
            self._request("fixed_new", key, tuple(shape))
        return key, share

    def extend_mask(self, key: int, shape, dim: int) -> torch.Tensor:
        share = _random_ring(shape, self._gen())
        if self.rank == 0:
            self._request("fixed_extend", key, tuple(shape), dim)
        return share

    def derive(self, parts: list[tuple], dim: int) -> tuple[int, list[torch.Tensor]]:
        key = next(self._keys)
        fresh = [_random_ring(p[1], self._gen()) for p in parts if p[0] == "new"]
        if self.rank == 0:
            self._request("fixed_derive", key, parts, dim)
        return key, fresh

    def forget(self, key: int) -> None:
        if self.rank == 0:
            self._request("fixed_forget", key)

    def triple(self, key: int, kind: str, a_shape, b_shape, view: tuple | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        a = _random_ring(a_shape, self._gen())
        if self.rank == 0:
            c = self._request("fixed_triple", key, kind, tuple(a_shape), view)
        else:
            c = _random_ring(result_shape(kind, a_shape, b_shape), self._gen())
        return a, c


def make_dealer(name: str, rank: int):
    return {"tfp": LocalDealer, "ttp": TTPDealer}[name](rank)


def run_ttp_server(on_connected=None) -> None:
    """Body of the dealer process (rank 2): CrypTen's TTP server plus the fixed-mask requests.
    ``on_connected`` runs once the parties have connected (before serving)."""
    import_crypten()
    from crypten.mpc.provider.ttp_provider import TTPServer

    class FixedMaskServer(TTPServer):
        masks: dict[int, torch.Tensor] = {}
        masks_t: dict[int, torch.Tensor] = {}

        def _setup_generators(self):
            super()._setup_generators()
            if on_connected is not None:
                on_connected()

        def fixed_new(self, key, shape):
            self.masks[key] = self._get_additive_PRSS(shape)
            return torch.zeros(1, dtype=torch.long)

        def fixed_extend(self, key, shape, dim):
            self.masks[key] = torch.cat([self.masks[key], self._get_additive_PRSS(shape)], dim=dim)
            return torch.zeros(1, dtype=torch.long)

        def fixed_derive(self, key, parts, dim):
            pieces = [viewed(self.masks[p[1]], p[2]) if p[0] == "view" else self._get_additive_PRSS(p[1])
                      for p in parts]
            self.masks[key] = torch.cat(pieces, dim=dim)
            return torch.zeros(1, dtype=torch.long)

        def fixed_forget(self, key):
            self.masks.pop(key, None)
            self.masks_t.pop(key, None)
            return torch.zeros(1, dtype=torch.long)

        def fixed_triple(self, key, kind, a_shape, view=None):
            a = self._get_additive_PRSS(a_shape)
            b, b_t = viewed(self.masks[key], view), None
            if wants_transposed(kind, a_shape, b, view):
                b_t = self.masks_t.setdefault(key, b.t().contiguous())
            c = apply(kind, a, b, b_t)
            return c - self._get_additive_PRSS(c.size(), remove_rank=True)

    FixedMaskServer()  # serves until party 0 sends "terminate"
