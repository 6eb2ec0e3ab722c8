"""Exact two-party truncation (issue #24): no catastrophic wrap errors.

Local truncation (each party divides its own share, SecureML/CrypTen 2PC) is off by ~2^64/d ring
units (2^32 in value at 16 fractional bits) whenever the two shares straddle the ring's wrap, which
happens with probability |x| / 2^64 per element, fresh every run. Here the dealer helps:

    y = x + K, K = d * floor(2^62 / d), so 0 <= y < 2^63 for |x| < 2^62 - d (always, in practice)
    dealer: shares of a uniform r, of q = floor(r / d) and of m = msb(r)   (r, q unsigned)
    open c = y + r (one round, 8 B per element each way)
    wrap of y + r: w = m * (1 - msb(c))   (y < 2^63: no wrap when m = 0; when m = 1 it wrapped iff
                                            the sum came back below 2^63) -- linear in m, c public
    floor(y / d) = floor(c / d) - q + w * floor(2^64 / d) + e,   e in {-1, 0, 1} ({-1, 0} for 2^f)
    x / d = that - K / d

so the result is within one unit of floor(x / d), never catastrophically wrong. Every tensor a step
truncates is opened in ONE message (``divide`` takes a list). CrypTen's own 2PC ``div_`` (every
fixed-point multiplication) is routed here by ``install``.

``MPCACHE_LOCAL_TRUNC=1`` keeps the old local truncation (only to measure the old code).
``record(fn)`` makes every truncation first open its input (a debug/analysis mode: it reveals the
values to both parties) and hands ``fn(site, values)`` the plain ring values (``examples/
trunc_magnitudes.py``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import crypten
import torch
from crypten.mpc.primitives import ArithmeticSharedTensor as AST

from protocols.ring.dealer import random_ring
from protocols.ring.ringdiv import combine, consts
from protocols.ring.shares import open_ring

LOCAL_ENV = "MPCACHE_LOCAL_TRUNC"

Divisor = int | torch.Tensor  # a positive integer, or int64 divisors broadcastable to the share

FAULT_ENV = "MPCACHE_TRUNC_FAULT"  # tests: =N makes the N-th truncation wrap like a straddling split

_state: dict = {"dealer": None, "rank": None, "recorder": None, "calls": 0}


def local() -> bool:
    """The old local truncation (env MPCACHE_LOCAL_TRUNC=1): measurements of the old code only."""
    return os.environ.get(LOCAL_ENV, "") not in ("", "0")


def install(dealer, rank: int) -> None:
    """Both parties, at backend setup: the dealer that supplies truncation material; CrypTen's 2PC
    ``div_`` by a public integer and its public products by integral constants go through here."""
    _state["dealer"], _state["rank"] = dealer, rank
    if not local():
        _patch_crypten()


def record(fn: Callable[[str, torch.Tensor], None] | None) -> None:
    """Analysis only: open every truncation's input and call ``fn(site, plain ring values)``."""
    _state["recorder"] = fn


# --- the protocol ------------------------------------------------------------------------------------


def _flat_divisors(share: torch.Tensor, d: Divisor) -> torch.Tensor:
    return torch.as_tensor(d, dtype=torch.int64).expand(share.shape).reshape(-1)


def divide(items: Sequence[tuple[torch.Tensor, Divisor]], rounding: str = "trunc") -> list[torch.Tensor]:
    """Shares of floor(x_i / d_i) (within one unit) for every (share of x_i, d_i): one opening for
    all. ``rounding`` is the old local mode's torch rounding (``trunc`` or ``floor``)."""
    items = list(items)
    if _state["recorder"] is not None:
        _record(items)
    _state["calls"] += 1
    if local() or _state["dealer"] is None:
        if _state["dealer"] is None and not local() and _two_party_crypten():
            raise RuntimeError("exact truncation used before protocols.ring.trunc.install(dealer, rank)")
        local_out = [s.div(torch.as_tensor(d, dtype=torch.int64), rounding_mode=rounding) for s, d in items]
        return _fault(local_out, items)
    first = _state["rank"] == 0
    uniform = {d for _, d in items if isinstance(d, int)}
    if len(uniform) == 1 and all(isinstance(d, int) for _, d in items) and next(iter(uniform)) > 1:
        d = next(iter(uniform))  # one divisor for all: scalar constants, no per-element work
        flat = torch.cat([s.reshape(-1) for s, _ in items]) if len(items) > 1 else items[0][0].reshape(-1)
        out = _divide_flat(flat, d, first)
    else:
        flat = torch.cat([s.reshape(-1) for s, _ in items])
        divisors = torch.cat([_flat_divisors(s, d) for s, d in items])
        work = divisors > 1  # d = 1 is exact already (nothing to open)
        out = flat.clone()
        if bool(work.all()):
            out = _divide_flat(flat, divisors, first)
        elif bool(work.any()):
            out[work] = _divide_flat(flat[work], divisors[work], first)
    result, start = [], 0
    for s, _ in items:
        n = s.numel()
        result.append(out[start : start + n].reshape(s.shape))
        start += n
    return _fault(result, items)


def _fault(result: list[torch.Tensor], items) -> list[torch.Tensor]:
    """Tests only (env MPCACHE_TRUNC_FAULT=N): the N-th truncation of this process comes out as a
    local truncation of a straddling split would: its last element off by 2^64 / d units."""
    if os.environ.get(FAULT_ENV, "") != str(_state["calls"]) or _state["rank"] != 0:
        return result
    d = items[-1][1]
    if isinstance(d, int) and d > 1 and result[-1].numel():
        result[-1] = result[-1].clone()
        result[-1].view(-1)[-1] += consts(d)[0]
    return result


def _divide_flat(x: torch.Tensor, d, first: bool) -> torch.Tensor:
    """The protocol on a flat share (d: an int or per-element divisors >= 2): one opening."""
    r_share, q_share, m_share = _state["dealer"].div_material(tuple(x.shape), d)
    y = x + d * consts(d)[2] if first else x  # + K (party 0 adds the public shift)
    c = open_ring(y + r_share)
    return combine(c, d, q_share, m_share, first)


def open_shifted(share: torch.Tensor, r_share: torch.Tensor, shift: int, rank: int, add: int = 0
                 ) -> torch.Tensor:
    """Open c = floor(x / 2^shift) + add + r + e (mod 2^(64 - shift)), e in {-1, 0, 1}, for a digit
    comparison or table lookup that masks its input with the dealer's r anyway: the truncation is
    folded into that opening (no round of its own, and no wrap: everything after it is read mod
    2^W, W <= 64 - shift). Opened: x + r 2^shift + rho, rho = rho_0 + rho_1 with rho_i uniform in
    [0, 2^shift) drawn by each party, so the low bits are uniform to either party; the carry out of
    them is e (never below floor: a value just under a threshold may read as on it, as with the
    exact truncation's {0, +1}; the approximations' level choices tolerate that side, not the other)."""
    if shift > 0 and _state["recorder"] is not None:
        _record([(share, 1 << shift)])  # a truncation site of the old code (folded here)
    if shift <= 0:
        y = share * (1 << -shift)
        return open_ring(y + r_share + (add if rank == 0 else 0))
    if local():  # the old way: a local truncation, then the opening
        t = share.div(1 << shift, rounding_mode="floor")
        return open_ring(t + r_share + (add if rank == 0 else 0))
    rho = random_ring(tuple(share.shape)) & ((1 << shift) - 1)
    masked = share + rho + r_share * (1 << shift)
    if rank == 0:
        masked = masked + add * (1 << shift)
    return open_ring(masked) >> shift


def trunc(share: torch.Tensor, bits: int) -> torch.Tensor:
    """Share of x / 2^bits (bits <= 0 scales up, exactly and locally)."""
    if bits <= 0:
        return share * (1 << -bits)
    return divide([(share, 1 << bits)])[0]


def trunc_many(items: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
    """``trunc`` of several shares in ONE opening."""
    return divide([(s, 1 << b) for s, b in items])


def _two_party_crypten() -> bool:
    return crypten.is_initialized() and crypten.communicator.get().get_world_size() >= 2


# --- analysis: record the inputs of every truncation --------------------------------------------------

_HELPERS = {"divide", "trunc", "_trunc", "_trunc_many", "trunc_columns", "_from_ring", "_record",
            "open_shifted", "div_", "div",
            "_arithmetic_function", "_arithmetic_function_", "mul", "mul_", "square_", "square",
            "encode_", "_div", "_mul", "matmul", "__mul__", "__rmul__", "_fixed", "__truediv__"}


def site_name() -> str:
    """The first caller outside the truncation helpers and CrypTen: ``module.function:line``."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        name = os.path.basename(code.co_filename)
        if code.co_name not in _HELPERS and "crypten" not in code.co_filename and name != "trunc.py":
            return f"{name[:-3]}.{code.co_name}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _record(items) -> None:
    site = site_name()
    fn, _state["recorder"] = _state["recorder"], None  # the opening below truncates nothing
    try:
        for s, _ in items:
            fn(site, open_ring(s))
    finally:
        _state["recorder"] = fn


# --- CrypTen's 2PC truncation -------------------------------------------------------------------------

_PATCHED = "_mpcache_exact_trunc"


def _integral(y) -> torch.Tensor | int | None:
    """A public multiplier whose value is an integer (2.0, -1.0, a 0/1 float mask) as int64."""
    if isinstance(y, float) and y.is_integer() and abs(y) < 2**31:
        return int(y)
    if torch.is_tensor(y) and y.is_floating_point() and not y.is_cuda and y.numel() <= 1 << 20:
        if bool((y.frac() == 0).all()) and bool((y.abs() < 2**31).all()):
            return y.long()
    return None


def _patch_crypten() -> None:

    if getattr(AST, _PATCHED, False):
        return
    original_div_, original_mul, original_mul_ = AST.div_, AST.mul, AST.mul_

    def div_(self, y):
        if isinstance(y, float) and y.is_integer():
            y = int(y)
        if torch.is_tensor(y) and y.is_floating_point() and bool((y.frac() == 0).all()):
            y = y.long()
        if (isinstance(y, int) or (torch.is_tensor(y) and not y.is_floating_point())) and \
                _state["dealer"] is not None and not self.share.is_cuda:
            self.share = divide([(self.share, y)])[0]
            return self
        return original_div_(self, y)

    def mul(self, y):
        # An integral public factor (2.0, -1.0, a 0/1 mask) needs no truncation: exact, no round.
        k = None if isinstance(y, int) else _integral(y)
        if k is None:
            return original_mul(self, y)
        result = self.clone()
        result.share = self.share * k
        return result

    def mul_(self, y):
        k = None if isinstance(y, int) else _integral(y)
        if k is None:
            return original_mul_(self, y)
        self.share = self.share * k
        return self

    AST.div_, AST.mul, AST.mul_ = div_, mul, mul_
    setattr(AST, _PATCHED, True)
