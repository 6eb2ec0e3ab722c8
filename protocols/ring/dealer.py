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
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from crypten import generators
from crypten.common.rng import generate_random_ring_element
from crypten.mpc.primitives import ArithmeticSharedTensor
from crypten.mpc.provider.ttp_provider import TTPClient

from protocols.ring import csprng
from protocols.ring.fixed_masks import FixedMasks
from protocols.ring.ringdiv import material
from protocols.ring.tables import (
    digits_of,
    line_select,
    suffix_counts,
    table_select,
    table_select3,
    tables_at,
    true_select,
    true_select3,
)

KINDS = ("matmul", "matmul_t", "mul")


def apply(kind: str, a: torch.Tensor, b: torch.Tensor, b_t: torch.Tensor | None = None) -> torch.Tensor:
    """``a ∘ b`` on ring (int64) tensors; b is the fixed operand. ``b_t``: b transposed, contiguous.

    torch's int64 matmul has no BLAS: a one-row product by a 2-D operand (every decode step) goes
    through ``torch.mv`` on the row-major operand, 10-40x faster than ``@`` (measured: x @ W^T for
    the 49,152 x 576 table 4.0 s vs 0.11 s; 1536 x 576 weights 18 ms vs 0.4 ms)."""
    one_row = a.dim() >= 1 and b.dim() == 2 and a.numel() == a.shape[-1]
    if kind == "matmul":
        if one_row and b_t is not None:
            return torch.mv(b_t, a.reshape(-1)).reshape(*a.shape[:-1], b.shape[-1])
        return a @ b_t.transpose(-1, -2) if b_t is not None else a @ b
    if kind == "matmul_t":
        if one_row:
            return torch.mv(b, a.reshape(-1)).reshape(*a.shape[:-1], b.shape[0])
        return a @ b.transpose(-1, -2)
    if kind == "mul":
        return a * b
    raise ValueError(f"unknown product kind {kind!r}")


def result_shape(kind: str, a_shape, b_shape) -> torch.Size:
    """Shape of ``a ∘ b`` without computing it (meta tensors; memoised: the same few shapes recur
    at every decode step, and a meta computation costs ~1 ms)."""
    return _result_shape(kind, tuple(a_shape), tuple(b_shape))


@lru_cache(maxsize=4096)
def _result_shape(kind: str, a_shape: tuple, b_shape: tuple) -> torch.Size:
    a = torch.empty(tuple(a_shape), device="meta", dtype=torch.float32)
    b = torch.empty(tuple(b_shape), device="meta", dtype=torch.float32)
    return apply(kind, a, b).shape


def random_ring(shape, generator=None) -> torch.Tensor:
    """Ring elements from the keyed stream ``generator`` stands for (None: this party's ``local()``
    stream; see protocols.ring.csprng), or from the generator itself with MPCACHE_INSECURE_RNG=mt19937."""
    if not csprng.insecure_rng():
        return csprng.stream_for(generator).ring(tuple(shape))

    return generate_random_ring_element(tuple(shape), generator=generator)


class _Pending:
    """What a party keeps between dealing comparison material and using it (protocols/numerics/digits.py)."""

    def __init__(self, spec, **parts):
        self.spec = spec
        self.__dict__.update(parts)


class LocalDealer:
    """TFP: party 0 is the dealer."""

    name = "tfp"

    def __init__(self, rank: int):
        self.rank = rank
        self.masks = FixedMasks()  # party 0 only
        self._keys = itertools.count()

    def _share(self, value: torch.Tensor | None, shape) -> torch.Tensor:
        if self.rank == 0:
            return ArithmeticSharedTensor(value, precision=0, src=0).share
        return ArithmeticSharedTensor(None, size=tuple(shape), precision=0, src=0).share

    def new_mask(self, shape) -> tuple[int, torch.Tensor]:
        """A fresh fixed mask B: returns (key, this party's share of B)."""
        key = next(self._keys)
        b = random_ring(shape) if self.rank == 0 else None
        if b is not None:
            self.masks.set(key, b)
        return key, self._share(b, shape)

    def extend_mask(self, key: int, shape, dim: int) -> torch.Tensor:
        """Append fresh mask rows along ``dim`` to B[key]; returns this party's share of them."""
        b = random_ring(shape) if self.rank == 0 else None
        if b is not None:
            self.masks.extend(key, b, dim)
        return self._share(b, shape)

    def derive(self, parts: list[tuple], dim: int) -> tuple[int, list[torch.Tensor]]:
        """A new fixed mask made of pieces along ``dim``: ("view", key, view) reuses a view of B[key];
        ("new", shape) draws fresh rows. Returns (key, this party's shares of the fresh pieces)."""
        key = next(self._keys)
        fresh = [random_ring(p[1]) if self.rank == 0 else None for p in parts if p[0] == "new"]
        if self.rank == 0:
            it = iter(fresh)
            self.masks.set(key, torch.cat(
                [self.masks.view(p[1], p[2]) if p[0] == "view" else next(it) for p in parts], dim=dim))
        shapes = [p[1] for p in parts if p[0] == "new"]
        return key, [self._share(b, shape) for b, shape in zip(fresh, shapes, strict=True)]

    def forget(self, key: int) -> None:
        self.masks.forget(key)

    @contextmanager
    def step(self) -> Iterator[None]:
        """Around the end of a token: nothing to prepare (party 0 makes material when it is used)."""
        yield

    def triple(self, key: int, kind: str, a_shape, b_shape, view: tuple | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shares of a fresh A (shape ``a_shape``) and of C = A ∘ B[key] (B seen through ``view``)."""
        c_shape = result_shape(kind, a_shape, b_shape)
        if self.rank == 0:
            a = random_ring(a_shape)
            c = apply(kind, a, *self.masks.operands(key, kind, a_shape, view))
            return self._share(a, a_shape), self._share(c, c_shape)
        return self._share(None, a_shape), self._share(None, c_shape)

    def div_material(self, shape, d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shares of a uniform r, of floor(r / d) and of msb(r) (r unsigned; d an int or public
        divisors of ``shape``) for an exact truncation (``protocols.ring.trunc``); party 0 draws them
        (no traffic)."""
        full = (3, *tuple(shape))
        if self.rank == 0:
            r = random_ring(shape)
            parts = self._share(torch.stack([r, *material(r, d)]), full)
        else:
            parts = self._share(None, full)
        return parts[0], parts[1], parts[2]

    def trunc(self, shape, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This party's shares of (r, r >> bits, msb(r)) of ``shape``."""
        return self.div_material(shape, 1 << bits)

    def _shared_gen(self):
        """The generator both parties hold: its own pair stream (csprng.shared_generator); with the
        insecure reference, CrypTen's (party 0's "next" is party 1's "prev")."""
        if not csprng.insecure_rng():
            return csprng.shared_generator("tfp-dealer")

        return generators["next" if self.rank == 0 else "prev"][torch.device("cpu")]

    def cmp_begin(self, shape, spec, with_m: bool = True):
        """Shares of a fresh r (party 0 knows r: it is the dealer; no tables are needed)."""
        shared = random_ring(shape, self._shared_gen())
        if self.rank == 0:
            mine = random_ring(shape)
            return _Pending(spec, r=mine + shared), mine
        return _Pending(spec), shared

    def cmp_select(self, pending, c_digits):
        """Shares of e_d, g_d, m e_d, m g_d [..., D] and m at the public digits of c.

        Party 1's share of table d is the line a + b*u (a, b from the shared generator): its entry
        and suffix sums at c are closed forms; party 0 holds the rest."""
        spec, gen = pending.spec, self._shared_gen()
        # Party 1's shares need no independence of one another (party 0, the dealer, knows every
        # value anyway): one random line per element serves all tables, and m's share is a.
        a, b = random_ring((*c_digits.shape[:-1], 1), gen), random_ring((*c_digits.shape[:-1], 1), gen)
        ma, mb, m1 = a, b, a[..., 0]
        n, total = suffix_counts(c_digits, spec.digit_bits)
        theirs = [a + b * c_digits, a * n + b * total, ma + mb * c_digits, ma * n + mb * total]
        if self.rank == 1:
            return (*theirs, m1)
        r_d = digits_of(pending.r, spec)
        m = (pending.r >> spec.top) & 1
        e, g = (r_d == c_digits).to(torch.int64), (r_d > c_digits).to(torch.int64)
        values = [e, g, e * m[..., None], g * m[..., None]]
        return (*[v - t for v, t in zip(values, theirs, strict=True)], m - m1)

    def lut_select(self, pending, c_digits, tabs):
        """Shares of the exp table entries (protocols/ring/tables.py) at the digits of c."""
        gen = self._shared_gen()
        if len(tabs) == 3:  # party 1's shares: uniform draws (party 0, the dealer, knows every value)
            theirs = list(random_ring((8, *c_digits.shape[:-1]), gen).unbind(0))
            values = true_select3(pending.r, c_digits, tabs) if self.rank == 0 else None
        else:
            a, b = random_ring(tuple(c_digits.shape), gen), random_ring(tuple(c_digits.shape), gen)
            theirs = line_select(a, b, c_digits, *tabs)
            values = true_select(pending.r, c_digits, *tabs) if self.rank == 0 else None
        if self.rank == 1:
            return theirs
        return [v - t for v, t in zip(values, theirs, strict=True)]


class TTPDealer:
    """CrypTen's trusted third party, extended by :class:`FixedMaskServer` requests.

    Each method is one dealer *item* (``begin``, both parties, before any draw): when the dealer
    works ahead (``protocols.net.ahead``) the item names the stream its randomness comes from and
    party 0's request is answered from what the dealer already sent."""

    name = "ttp"

    def __init__(self, rank: int):
        self.rank = rank
        self.client = TTPClient.get()
        self._keys = itertools.count()
        self._begin = getattr(self.client, "begin_item", None)  # installed with the dealer link

    def _gen(self):
        return self.client.get_generator(device="cpu")

    def _item(self, name: str, *args) -> None:
        if self._begin is not None:
            self._begin(name, args)

    def _request(self, name: str, *args):
        return self.client.ttp_request(name, None, *args)

    @contextmanager
    def step(self) -> Iterator[None]:
        """Around the end of a token (both parties): when it is done, the dealer's prediction of
        the next step starts (``protocols.net.ahead``)."""
        yield
        if hasattr(self.client, "boundary"):
            self.client.boundary()

    def new_mask(self, shape) -> tuple[int, torch.Tensor]:
        key = next(self._keys)
        self._item("fixed_new", key, tuple(shape))
        share = random_ring(shape, self._gen())
        if self.rank == 0:
            self._request("fixed_new", key, tuple(shape))
        return key, share

    def extend_mask(self, key: int, shape, dim: int) -> torch.Tensor:
        self._item("fixed_extend", key, tuple(shape), dim)
        share = random_ring(shape, self._gen())
        if self.rank == 0:
            self._request("fixed_extend", key, tuple(shape), dim)
        return share

    def derive(self, parts: list[tuple], dim: int) -> tuple[int, list[torch.Tensor]]:
        key = next(self._keys)
        self._item("fixed_derive", key, parts, dim)
        fresh = [random_ring(p[1], self._gen()) for p in parts if p[0] == "new"]
        if self.rank == 0:
            self._request("fixed_derive", key, parts, dim)
        return key, fresh

    def forget(self, key: int) -> None:
        self._item("fixed_forget", key)
        if self.rank == 0:
            self._request("fixed_forget", key)

    def cmp_begin(self, shape, spec, with_m: bool = True):
        """Shares of r and of the one-hot digit tables (party 0 receives its table shares); the
        m * onehot tables only ``with_m`` (comparisons)."""
        self._item("cmp_tables", tuple(shape), spec.digits, spec.digit_bits, with_m)
        r = random_ring(shape, self._gen())
        tshape = (*shape, spec.digits, 1 << spec.digit_bits)
        if self.rank == 0:
            flat = self._request("cmp_tables", tuple(shape), spec.digits, spec.digit_bits, with_m)
            n = int(torch.tensor(tshape).prod())
            tables = [flat[:n].view(tshape)]
            if with_m:
                tables += [flat[n : 2 * n].view(tshape), flat[2 * n :].view(shape)]
        else:
            gen = self._gen()
            tables = [random_ring(tshape, gen)]
            if with_m:
                tables += [random_ring(tshape, gen), random_ring(shape, gen)]
        return _Pending(spec, tables=tables), r

    def lut_select(self, pending, c_digits, tabs):
        if len(tabs) == 3:
            return table_select3(pending.tables[0], c_digits, tabs)
        return table_select(pending.tables[0], c_digits, *tabs)

    def cmp_select(self, pending, c_digits):
        e, g = tables_at(pending.tables[0], c_digits)
        if len(pending.tables) == 1:  # an equality test: no m tables were dealt
            return e, g, None, None, None
        me, mg = tables_at(pending.tables[1], c_digits)
        return e, g, me, mg, pending.tables[2]

    def div_material(self, shape, d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``LocalDealer.div_material``: both parties draw r's shares from their dealer streams;
        party 1 draws its shares of floor(r / d) and msb(r) too, party 0 receives its shares by one
        ``trunc_material`` request (divisors other than one int go run-length encoded)."""
        shape = tuple(shape)
        # plain ints and lists only (a transport that carries JSON carries these); both parties
        # name the item by them
        runs = None if isinstance(d, int) else torch.unique_consecutive(d.reshape(-1), return_counts=True)
        spec = d if runs is None else [runs[0].tolist(), runs[1].tolist()]
        self._item("trunc_material", list(shape), spec)
        r = random_ring(shape, self._gen())
        if self.rank == 0:
            flat = self._request("trunc_material", list(shape), spec)
            n = r.numel()
            return r, flat[:n].reshape(shape), flat[n:].reshape(shape)
        gen = self._gen()
        return r, random_ring(shape, gen), random_ring(shape, gen)

    def trunc(self, shape, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.div_material(shape, 1 << bits)

    def triple(self, key: int, kind: str, a_shape, b_shape, view: tuple | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        self._item("fixed_triple", key, kind, tuple(a_shape), view)
        a = random_ring(a_shape, self._gen())
        if self.rank == 0:
            c = self._request("fixed_triple", key, kind, tuple(a_shape), view)
        else:
            c = random_ring(result_shape(kind, a_shape, b_shape), self._gen())
        return a, c


def make_dealer(name: str, rank: int):
    return {"tfp": LocalDealer, "ttp": TTPDealer}[name](rank)


