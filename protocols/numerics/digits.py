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

import torch

from protocols.ring import trunc
from protocols.ring.shares import open_ring, ring_mul_shares
from protocols.ring.tables import BOUNDED_SPECS, RING_SPECS, DigitSpec, digits_of


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
        prods = list(ring_mul_shares(torch.stack(left), torch.stack(right)).unbind(0))
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


def equals_share(share: torch.Tensor, value: int, bits: int, dealer, rank: int) -> torch.Tensor:
    """Share (scale 1) of [v == value] for a secret integer v (ring units) known to lie in
    [0, 2^bits): one opening of v + r, then a one-hot table entry of r mod 2^bits (local)."""
    spec = DigitSpec(0, 1, bits)
    handle, r_share = dealer.cmp_begin(tuple(share.shape), spec, with_m=False)
    c = open_ring(share + r_share)
    e = dealer.cmp_select(handle, digits_of(c - value, spec))[0]
    return e[..., 0]
