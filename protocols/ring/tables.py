"""Digit decompositions and one-hot lookup tables: the plain (local) arithmetic of the dealer's
comparison and exp material, shared by the dealer and the parties. No secret ever passes here:
only public openings c, the dealer's own r, and table shares."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class DigitSpec:
    frac_bits: int  # the comparison's precision (x is truncated to these fractional bits first)
    digits: int
    digit_bits: int

    @property
    def width(self) -> int:
        return self.digits * self.digit_bits + 1

    @property
    def top(self) -> int:
        """The bit of y = x + 2^top that is set iff x >= 0: W - 1, at most 63 (the whole ring; then
        the digits cover the 63 low bits, the highest digit's top bit unused)."""
        return min(self.width - 1, 63)

    @property
    def bound(self) -> float:
        """|x| must stay below this (else the comparison is wrong)."""
        return 2.0 ** (self.width - 1 - self.frac_bits)


# Differences of scores, gate inputs and logits (|x| < 4096 at 2^-8 resolution); softmax
# denominators against powers of 4 (|x| < 2^17 at 2^-3); RMSNorm variances against powers of 4
# (|x| < 2^24 at full precision). (fractional bits, W - 1)
KINDS = {"value": (8, 20), "count": (3, 20), "wide": (16, 40)}


# Exact comparisons over the whole 64-bit ring (top-k keys, the maxima of a selection): 63 low
# bits in digits. TFP never builds tables, so 2 digits of 32 bits (2 rounds, 80 B); a TTP dealer
# sends 2^w entries per digit, so 7 digits of 9 bits there (4 rounds).
RING_SPECS = {"tfp": DigitSpec(0, 2, 32), "ttp": DigitSpec(0, 7, 9)}


# Selections' comparisons of BOUNDED values (the default, ``TopkConfig.compare``): differences of
# scores, logits, probabilities or keys at CrypTen's 16 fractional bits with |x| < 2^16 (so every
# value |v| < 2^15). Bit 32 of x + 2^32 is the sign: one 32-bit digit with TFP (no product tree:
# 1 round, 16 B: the opening of c alone), 8 digits of 4 bits with a TTP dealer (4 rounds). Exact
# within the bound; SmolLM2's largest |q.k| measured on the needle prompts is far below it (README).
# TTP digit width: 4 x 8 bits made 3.78 GB of dealer material per SmolLM2 decode token (2,048 table
# entries per comparison; the vocabulary argmax alone 1.6 GB); 8 x 4 bits make 1.12 GB (256 entries)
# for +84 MB online and +107 rounds per token, and took 2/3 of the CPU (bench mpc, L=59, same load).
BOUNDED_SPECS = {"tfp": DigitSpec(16, 1, 32), "ttp": DigitSpec(16, 8, 4)}


def spec_for(kind: str, digit_bits: int) -> DigitSpec:
    """The comparison of ``kind`` with digits of ``digit_bits`` (5 or 10: W - 1 = 20 or 40)."""
    frac_bits, low_bits = KINDS[kind]
    if low_bits % digit_bits:
        raise ValueError(f"digit bits {digit_bits} must divide {low_bits}")
    return DigitSpec(frac_bits, low_bits // digit_bits, digit_bits)


def digits_of(c: torch.Tensor, spec: DigitSpec) -> torch.Tensor:
    """[..., D] the w-bit digits of the ring value c mod 2^top (least significant first)."""
    if spec.digits * spec.digit_bits > spec.top:
        c = c & ((1 << spec.top) - 1)
    mask = (1 << spec.digit_bits) - 1
    shifts = torch.arange(spec.digits, dtype=torch.int64) * spec.digit_bits
    return (c.unsqueeze(-1) >> shifts) & mask


def suffix_counts(c: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For public digits c: (number of u in (c, 2^w), sum of those u)."""
    top = (1 << w) - 1
    n = top - c
    total = top * (top + 1) // 2
    # c (c + 1) / 2 without overflowing int64 for w = 32: halve the even factor first
    tri = torch.where(c % 2 == 0, (c // 2) * (c + 1), c * ((c + 1) // 2))
    return n, total - tri


TABLE_BLOCK = 1 << 20  # table entries per block of tables_at's prefix sums (8 MB: stays in cache)


def tables_at(tables: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shares of (onehot[c], sum of onehot[u] for u > c) from full table shares [..., D, 2^w].

    above = (sum of all) - (prefix sum at c), one prefix sum per block of rows: a TTP party reads
    GBs of tables per token, and a flip-cumsum-flip over the whole tensor was 5-7x slower (three
    passes, three full-size temporaries; it was most of a TTP decode token)."""
    width = tables.shape[-1]
    rows = tables.reshape(-1, width)
    idx = c.reshape(-1, 1)
    at = rows.gather(-1, idx).squeeze(-1)
    above = torch.empty_like(at)
    step = max(1, TABLE_BLOCK // width)
    for i in range(0, rows.shape[0], step):
        prefix = rows[i:i + step].cumsum(-1)
        above[i:i + step] = prefix[:, -1] - prefix.gather(-1, idx[i:i + step]).squeeze(-1)
    return at.view(c.shape), above.view(c.shape)


def onehot_tables_minus(r: torch.Tensor, spec: DigitSpec, with_m: bool, others: torch.Tensor) -> torch.Tensor:
    """Flat (onehot, m * onehot, m) of r minus ``others`` (the other party's flat shares, drawn in
    that order), computed in place in ``others``: the tables are never materialised (a one per
    digit is added), which is what a dealer making GBs of them per prefill needs."""
    d = digits_of(r, spec).unsqueeze(-1)  # [..., D, 1]
    n = d.numel() << spec.digit_bits
    out = others.neg_()
    tshape = (*d.shape[:-1], 1 << spec.digit_bits)
    out[:n].view(tshape).scatter_add_(-1, d, torch.ones_like(d))
    if with_m:
        m = (r >> spec.top) & 1
        out[n:2 * n].view(tshape).scatter_add_(-1, d, m[..., None, None].expand(d.shape).contiguous())
        out[2 * n:].view(m.shape).add_(m)
    return out


EXP_BITS = 18  # exp(-y): y_int = floor((y + offset) 2^F) < 2^18, split into digits


def exp_spec(digit_bits: int) -> DigitSpec:
    """The digits of exp's y_int: two of 9 bits (2 x 512 table entries per element) or three of 6
    bits (3 x 64: 1/5 of a TTP dealer's tables, for one more round of products)."""
    if digit_bits not in (6, 9):
        raise ValueError(f"exp digits of {digit_bits} bits: 9 (two digits) or 6 (three)")
    return DigitSpec(0, EXP_BITS // digit_bits, digit_bits)


SPEC = exp_spec(9)


SCALE = 16  # fractional bits of the tables and of the result


@lru_cache(maxsize=4)
def tables(frac_bits: int, offset: float, digit_bits: int = 9) -> tuple[torch.Tensor, ...]:
    """T_0[u] = exp(-(u + 1/2) / 2^F + offset), T_i[u] = exp(-u 2^(i w) / 2^F) for the digits i > 0,
    at SCALE fractional bits: exp(-y) = prod_i T_i[y_i] exactly, up to their rounding."""
    spec = exp_spec(digit_bits)
    u = torch.arange(1 << digit_bits, dtype=torch.float64)
    out = [torch.exp(-(u + 0.5) / 2**frac_bits + offset)]
    out += [torch.exp(-u * 2 ** (i * digit_bits) / 2**frac_bits) for i in range(1, spec.digits)]
    return tuple((t * 2**SCALE).round().long() for t in out)


def rotated(table: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """[..., N]: entry u is table[(c - u) mod N] (int64)."""
    n = table.shape[0]
    return table[(c.unsqueeze(-1) - torch.arange(n)) % n]


@lru_cache(maxsize=8)
def _line_sums(table_key: tuple) -> tuple[torch.Tensor, ...]:
    """For party 1's TFP shares a + b*u of a one-hot table: per public c, the sums over u of
    T[(c - u) mod N], u T[(c - u) mod N], and the same over u > c only."""
    table = torch.tensor(table_key, dtype=torch.int64)
    n = table.shape[0]
    c = torch.arange(n)
    rot = rotated(table, c)  # [N (c), N (u)]
    u = torch.arange(n)
    above = (u[None, :] > c[:, None]).to(torch.int64)
    return rot.sum(-1), (rot * u).sum(-1), (rot * above).sum(-1), (rot * u * above).sum(-1)


def line_select(a: torch.Tensor, b: torch.Tensor, c_digits: torch.Tensor, t0: torch.Tensor,
                t1: torch.Tensor) -> list[torch.Tensor]:
    """Party 1's shares (TFP) of E0, b E0, A, B when its table shares are the lines a + b*u."""
    s0, p0, q0, r0 = _line_sums(tuple(t0.tolist()))
    s1, p1, _, _ = _line_sums(tuple(t1.tolist()))
    c0, c1 = c_digits[..., 0], c_digits[..., 1]
    n = t1.shape[0]
    a0, b0, a1, b1 = a[..., 0], b[..., 0], a[..., 1], b[..., 1]
    c1m = (c1 - 1) % n
    return [a0 * s0[c0] + b0 * p0[c0], a0 * q0[c0] + b0 * r0[c0],
            a1 * s1[c1] + b1 * p1[c1], a1 * s1[c1m] + b1 * p1[c1m]]


def true_select(r: torch.Tensor, c_digits: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor):
    """The values E0, b E0, A, B (party 0 under TFP knows r)."""
    n = 1 << SPEC.digit_bits
    r_d = digits_of(r, SPEC)
    c0, c1, r0, r1 = c_digits[..., 0], c_digits[..., 1], r_d[..., 0], r_d[..., 1]
    e0 = t0[(c0 - r0) % n]
    return [e0, e0 * (r0 > c0), t1[(c1 - r1) % n], t1[(c1 - 1 - r1) % n]]


@lru_cache(maxsize=8)
def _circulant(table_key: tuple) -> torch.Tensor:
    """[N (c), N (u)]: T[(c - u) mod N], so that a rotation by a public c is one row (a copy of
    contiguous memory, not N gathered elements)."""
    table = torch.tensor(table_key, dtype=torch.int64)
    return rotated(table, torch.arange(table.shape[0]))


def table_select(onehot: torch.Tensor, c_digits: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor):
    """E0, b E0, A, B from full table shares onehot [..., 2, N] (TTP).

    Each is a dot product of a table share with a table rotated by the public digit: rows of the
    circulant matrix, multiplied in place; b E0 (the terms u > c0) is the total minus a prefix sum
    at c0. Exact in the ring like the sums it replaces (5x faster on a prefill's SiLU tables)."""
    n = t0.shape[0]
    c0, c1 = c_digits[..., 0], c_digits[..., 1]
    m0, m1 = _circulant(tuple(t0.tolist())), _circulant(tuple(t1.tolist()))
    x0 = m0[c0].mul_(onehot[..., 0, :]).cumsum_(-1)  # prefix sums: the total is the last one
    e0 = x0[..., -1]
    below = x0.gather(-1, c0.unsqueeze(-1)).squeeze(-1)  # terms u <= c0
    s1 = onehot[..., 1, :]
    a = m1[c1].mul_(s1).sum(-1)
    b = m1[(c1 - 1) & (n - 1)].mul_(s1).sum(-1)
    return [e0, e0 - below, a, b]


# --- three digits: the borrow runs through the middle digit -----------------------------------------
# y1 = (c1 - r1 - b0) mod N, its borrow b1 = [r1 > c1] + b0 [r1 = c1], y2 = (c2 - r2 - b1) mod N:
# the values E0 = T0[y0], b0 E0, A1, B1 (T1 at c1 - r1 and c1 - 1 - r1), G1 = [r1 > c1],
# Q1 = [r1 = c1] (scale 1), A2, B2 (T2 likewise) are sums of one-hot entries at public indices.


def true_select3(r: torch.Tensor, c_digits: torch.Tensor, tabs: tuple[torch.Tensor, ...]
                 ) -> list[torch.Tensor]:
    """The eight values above (party 0 under TFP knows r)."""
    t0, t1, t2 = tabs
    n = t0.shape[0]
    r_d = digits_of(r, exp_spec(n.bit_length() - 1))
    (c0, c1, c2), (r0, r1, r2) = c_digits.unbind(-1), r_d.unbind(-1)
    e0 = t0[(c0 - r0) % n]
    return [e0, e0 * (r0 > c0), t1[(c1 - r1) % n], t1[(c1 - 1 - r1) % n], (r1 > c1).to(torch.int64),
            (r1 == c1).to(torch.int64), t2[(c2 - r2) % n], t2[(c2 - 1 - r2) % n]]


def table_select3(onehot: torch.Tensor, c_digits: torch.Tensor, tabs: tuple[torch.Tensor, ...]
                  ) -> list[torch.Tensor]:
    """The eight values from full table shares onehot [..., 3, N] (TTP), as ``table_select``."""
    t0, t1, t2 = tabs
    n = t0.shape[0]
    c0, c1, c2 = c_digits.unbind(-1)
    m0, m1, m2 = (_circulant(tuple(t.tolist())) for t in tabs)
    x0 = m0[c0].mul_(onehot[..., 0, :]).cumsum_(-1)
    e0 = x0[..., -1]
    below = x0.gather(-1, c0.unsqueeze(-1)).squeeze(-1)
    s1, s2 = onehot[..., 1, :], onehot[..., 2, :]
    p1 = s1.cumsum(-1)  # prefix sums of digit 1's one-hot share: its entries above c1, at c1
    at1 = s1.gather(-1, c1.unsqueeze(-1)).squeeze(-1)
    above1 = p1[..., -1] - p1.gather(-1, c1.unsqueeze(-1)).squeeze(-1)
    return [e0, e0 - below, m1[c1].mul_(s1).sum(-1), m1[(c1 - 1) & (n - 1)].mul_(s1).sum(-1), above1, at1,
            m2[c2].mul_(s2).sum(-1), m2[(c2 - 1) & (n - 1)].mul_(s2).sum(-1)]
