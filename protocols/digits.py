"""Dealer-assisted secret comparison in 1 + ceil(log2 D) rounds (CrypTen's adder circuit: ~8).

[x < 0] for a secret x with |x| * 2^F < 2^(W-1), W = D * w + 1 (``DigitSpec``):

1. y = trunc(x, to F fractional bits) + 2^(W-1) lies in [0, 2^W); x >= 0 iff bit W-1 of y is set.
2. The dealer deals a random ring element r (shares), m = bit W-1 of r, and for each w-bit digit
   r_d of r mod 2^(W-1) a one-hot table onehot_d[u] = [r_d == u] and m * onehot_d (shares).
3. c = y + r is opened (one round; uniformly random, so it says nothing about x).
4. bit W-1 of y = c_{W-1} xor m xor borrow, borrow = [c mod 2^(W-1) < r mod 2^(W-1)]. Per digit,
   e_d = [r_d == c_d] and g_d = [r_d > c_d] are sums of table entries at public indices (local);
   borrow = g_{D-1} + e_{D-1} (g_{D-2} + e_{D-2} (...)) by a tree of Beaver products over the digits
   (ceil(log2 D) rounds), carrying m * borrow along (from the m * onehot tables) for the xor.

Only the delivery of the tables depends on the dealer: the TTP dealer sends party 0 its shares of
all D * 2^w entries (dealer traffic); with TFP, party 0 is the dealer and knows r, so party 1's
shares are drawn from a generator the two parties share in a form whose entry sums party 1 can
evaluate directly (a random line a + b*u per digit) and party 0 computes its own complement: no
tables are materialised. Rounds and online bytes are the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from protocols import trunc
from protocols.fixed import open_ring


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
# 1 round, 16 B: the opening of c alone), 4 digits of 8 bits with a TTP dealer (3 rounds). Exact
# within the bound; SmolLM2's largest |q.k| measured on the needle prompts is far below it (README).
BOUNDED_SPECS = {"tfp": DigitSpec(16, 1, 32), "ttp": DigitSpec(16, 4, 8)}


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


def _ring_mul(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Shares of the exact ring products left * right (one Beaver round, scale 1)."""
    from protocols.nonlinear import _mpc_from_share
    from protocols.nonlinear import _ring_mul as ring_mul

    return ring_mul(_mpc_from_share(left, 0), _mpc_from_share(right, 0))


def _borrow(e: torch.Tensor, g: torch.Tensor, me: torch.Tensor, mg: torch.Tensor):
    """Shares of (borrow, m * borrow) from the per-digit [..., D] shares, by a product tree."""
    if e.shape[-1] == 1:  # one digit: no tree
        return g[..., 0], mg[..., 0]
    # node: (G, E, mG, mE); the lowest block is only ever a low operand, so it needs only G
    nodes = [(g[..., d], e[..., d], mg[..., d], me[..., d]) for d in range(e.shape[-1])]
    nodes[0] = (nodes[0][0], None, None, None)
    while len(nodes) > 1:
        pairs = [(nodes[i], nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]
        last = len(nodes) == 2
        left, right, slots = [], [], []
        for lo, hi in pairs:
            want = [(hi[1], lo[0]), (hi[3], lo[0])]  # E_hi G_lo, mE_hi G_lo
            if not last and lo[1] is not None:
                want += [(hi[1], lo[1]), (hi[3], lo[1])]  # E_hi E_lo, mE_hi E_lo
            slots.append(len(want))
            for a, b in want:
                left.append(a)
                right.append(b)
        prods = list(_ring_mul(torch.stack(left), torch.stack(right)).unbind(0))
        merged = []
        for (_lo, hi), n in zip(pairs, slots, strict=True):
            p, prods = prods[:n], prods[n:]
            e_new, me_new = (p[2], p[3]) if n > 2 else (None, None)
            merged.append((hi[0] + p[0], e_new, hi[2] + p[1], me_new))
        if len(nodes) % 2:
            merged.append(nodes[-1])
        nodes = merged
    return nodes[0][0], nodes[0][2]


def ltz_share(share: torch.Tensor, spec: DigitSpec, dealer, rank: int, in_bits: int = 16) -> torch.Tensor:
    """Share (scale 1) of [x < 0] for x shared as ``share`` at ``in_bits`` fractional bits."""
    shift = in_bits - spec.frac_bits
    top = spec.top
    if shift > 0 and top + shift > 62:
        raise ValueError(f"comparison {spec} of a value at {in_bits} bits does not fit the ring")
    handle, r_share = dealer.cmp_begin(tuple(share.shape), spec)
    # c = y + r with y = x / 2^shift + 2^top (the truncation folded into this opening)
    c = trunc.open_shifted(share, r_share, shift, rank, (1 << top) if top < 63 else -(1 << 63))
    e, g, me, mg, m = dealer.cmp_select(handle, digits_of(c, spec))
    borrow, m_borrow = _borrow(e, g, me, mg)
    s = m + borrow - 2 * m_borrow  # m xor borrow
    one = 1 if rank == 0 else 0
    c_top = (c >> top) & 1
    bit = torch.where(c_top.bool(), one - s, s)  # bit W-1 of y: set iff x >= 0
    return one - bit


def ltz_ring(share: torch.Tensor, dealer, rank: int) -> torch.Tensor:
    """Share (scale 1) of [x < 0] for ANY ring value x (exact, whatever its scale or size)."""
    return ltz_share(share, RING_SPECS[dealer.name], dealer, rank, in_bits=0)


def ltz_bounded(share: torch.Tensor, dealer, rank: int, in_bits: int = 16) -> torch.Tensor:
    """Share (scale 1) of [x < 0] for x at ``in_bits`` fractional bits with |x| * 2^in_bits < 2^32
    (|x| < 2^16 at 16 bits; exact there, no truncation; ``BOUNDED_SPECS``): one opening with TFP."""
    spec = BOUNDED_SPECS[dealer.name]
    return ltz_share(share, DigitSpec(in_bits, spec.digits, spec.digit_bits), dealer, rank, in_bits=in_bits)


def ltz_small(share: torch.Tensor, bits: int, dealer, rank: int) -> torch.Tensor:
    """Share (scale 1) of [x < 0] for a ring integer |x| < 2^bits (a count against k): one digit,
    one round."""
    return ltz_share(share, DigitSpec(0, 1, bits), dealer, rank, in_bits=0)


def onehot_share(share: torch.Tensor, values: int, bits: int, dealer, rank: int) -> torch.Tensor:
    """Shares (scale 1) [..., values] of [v == u] for u = 0..values-1, v a secret ring integer in
    [0, 2^bits): ONE opening of v + r, then a table entry per u (local)."""
    spec = DigitSpec(0, 1, bits)
    handle, r_share = dealer.cmp_begin(tuple(share.shape), spec, with_m=False)
    c = open_ring(share + r_share)
    return torch.stack([dealer.cmp_select(handle, digits_of(c - u, spec))[0][..., 0] for u in range(values)],
                       dim=-1)


# --- dealer material -------------------------------------------------------------------------------


def suffix_counts(c: torch.Tensor, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For public digits c: (number of u in (c, 2^w), sum of those u)."""
    top = (1 << w) - 1
    n = top - c
    total = top * (top + 1) // 2
    # c (c + 1) / 2 without overflowing int64 for w = 32: halve the even factor first
    tri = torch.where(c % 2 == 0, (c // 2) * (c + 1), c * ((c + 1) // 2))
    return n, total - tri


def tables_at(tables: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shares of (onehot[c], sum of onehot[u] for u > c) from full table shares [..., D, 2^w]."""
    at = tables.gather(-1, c.unsqueeze(-1)).squeeze(-1)
    suffix = tables.flip(-1).cumsum(-1).flip(-1)  # suffix[u] = sum over v >= u
    above = suffix.gather(-1, c.unsqueeze(-1)).squeeze(-1) - at
    return at, above


def onehot_tables(r: torch.Tensor, spec: DigitSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(onehot [..., D, 2^w], m * onehot, m) of the dealer's r (int64 0/1 entries)."""
    d = digits_of(r, spec)
    onehot = torch.nn.functional.one_hot(d, 1 << spec.digit_bits).to(torch.int64)
    m = (r >> spec.top) & 1
    return onehot, onehot * m[..., None, None], m


def equals_share(share: torch.Tensor, value: int, bits: int, dealer, rank: int) -> torch.Tensor:
    """Share (scale 1) of [v == value] for a secret integer v (ring units) known to lie in
    [0, 2^bits): one opening of v + r, then a one-hot table entry of r mod 2^bits (local)."""
    spec = DigitSpec(0, 1, bits)
    handle, r_share = dealer.cmp_begin(tuple(share.shape), spec, with_m=False)
    c = open_ring(share + r_share)
    e = dealer.cmp_select(handle, digits_of(c - value, spec))[0]
    return e[..., 0]
