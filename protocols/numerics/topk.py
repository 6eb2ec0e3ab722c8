"""Oblivious top-k on CrypTen secret scores [H, n] with a public k (DESIGN §4 "Under MPC").

Every construction works on the same secret *keys*, integers in the ring:
``key_i = ring(s_i) * n + (n - 1 - i)``. They are distinct and ordered like the scores with the
one tie rule of the product, **equal scores: the lower index wins** (``PlainBackend.topk`` sorts
stably and agrees). Public ``forced`` items get the public key ``2^60 + (n - 1 - i)``, above every
score key, so they are always kept (counted inside k) and never tie with a score. Keys need
``|ring(s)| * n < 2^59`` (at 16 fractional bits and n = 2048: |s| < 2^32).

A construction turns the keys into secret *keep bits* (exactly k ones per row):

- ``argmax``: k tournaments (``ceil(log2 n)`` comparison layers each); the picked key is pushed
  down by the public 2^62, below every unpicked key. The baseline; k * log n layers.
- ``allpairs``: one layer of n(n-1)/2 comparisons, rank_i = #keys above key_i (local sums),
  keep = [rank < k] (one more layer of n). Fewest rounds; bytes grow with n^2.
- ``bisect``: the k-th largest key, r bits per step from the top: each step compares the n keys
  with 2^r - 1 secret candidates and the counts with k (two layers). Scores are first clamped to a
  public bound |s| < 2^value_bits (beyond it, clamped scores tie and the lower index wins; still
  exactly k); (value_bits + 16 + log2 n + 2) / r steps of (2^r - 1) n comparisons.
- ``network``: a bitonic sorting network on the keys (log n (log n + 1) / 2 layers of n/2
  compare-exchanges); the key at sorted position k-1 is the threshold.

``compact`` then makes the one-hot [H, k, n] in ascending position order, see there.

Comparisons: CrypTen's exact circuit (~8 rounds), or with a ``dealer`` the dealer-assisted digit
comparison: of the keys over the whole ring (``digits.ltz_ring``: exact too, 2 rounds with TFP), or
for all-pairs (``TopkConfig.compare="bounded"``, the default) of the score differences themselves,
|s_i - s_j| < 2^16, in one digit (``digits.ltz_bounded``: 1 round; the scores are clamped to
|s| <= 2^15 first, so past the bound they tie instead of breaking the count); with a dealer the count against
k is a one-digit comparison (1 round) and the compaction's one-hot one opening
(``digits.onehot_share``) instead of a binary conversion (with TFP without the product either).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import crypten
import torch
from crypten.mpc.ptype import ptype as Ptype

from mpcache.core.backend import check_topk
from mpcache.core.errors import UserError
from protocols.numerics import digits
from protocols.numerics import nonlinear as nl
from protocols.ring import shares

METHODS = ("argmax", "allpairs", "bisect", "network")
FORCED_KEY = 1 << 60  # above every score key (|key| < 2^59)
PUSH_DOWN = 1 << 62  # picked keys (argmax) fall below every key, never wrap (2^62 + 2^60 < 2^63)
PAD_KEY = -(1 << 61)  # bitonic padding: below every key
# Bounded comparisons: ring values (any scale) are clamped to [-2^31, 2^31 - 1] first, so every
# difference of two lies in [-(2^32 - 1), 2^32 - 1], where ``digits.ltz_bounded`` (bit 32 of
# x + 2^32) is the sign. Past it the sign wraps and a rank could be shared or skipped.
BOUND_RING_BITS = 31


@dataclass(frozen=True)
class TopkConfig:
    """How ``MPCBackend.topk`` selects. ``method='auto'`` follows :func:`choose` (measured rule,
    docs/topk.md); a named method forces that construction (benchmarks, tests)."""

    method: str = "auto"
    value_bits: int = 12  # bisect: scores must satisfy |s| < 2^value_bits
    radix_bits: int = 2  # bisect: bits of the threshold found per step (2^r - 1 candidates at once)
    allpairs_max_pairs: int = 1 << 17  # auto: all-pairs up to this many comparisons per call
    # With a dealer: "bounded" compares score differences |s_i - s_j| < 2^16 in one digit (all-pairs,
    # the maxima: selectcmp.BoundedNumerics; 1 round), "ring" the keys over the whole ring (2 rounds).
    compare: str = "bounded"

    def __post_init__(self):
        if self.method not in ("auto", *METHODS):
            raise UserError(f"unknown top-k method {self.method!r} (auto, {', '.join(METHODS)})")
        if self.compare not in ("bounded", "ring"):
            raise UserError(f"unknown top-k comparison {self.compare!r} (bounded, ring)")


def choose(heads: int, n: int, k: int, config: TopkConfig) -> str:
    """The construction for (H, n, k), from ``mpcache bench topk`` (docs/topk.md): all-pairs while
    its H n(n-1)/2 comparisons stay within budget (28-35 rounds at any n; at n = 256 the fastest on
    both network presets), else bisection (at n = 2048: 365-372 rounds and 61-194 MB, against
    0.9-1.0 GB for all-pairs; fastest on WAN, within 15 % of the network on LAN)."""
    if config.method != "auto":
        return config.method
    return "allpairs" if heads * n * (n - 1) // 2 <= config.allpairs_max_pairs else "bisect"


# --- ring helpers ---------------------------------------------------------------------------------
def _ring(share: torch.Tensor):
    """An MPCTensor holding integer ring values (scale 1)."""
    return shares.mpc_from_share(share, 0)


def _public(value: torch.Tensor) -> torch.Tensor:
    """Share of a public int64 tensor: party 0 holds it, party 1 holds zero."""
    return value if shares.rank() == 0 else torch.zeros_like(value)


def _lt(share: torch.Tensor, dealer=None) -> torch.Tensor:
    """Share (scale 1) of [x < 0] for ring values x, exact on the whole ring: CrypTen's circuit, or
    the dealer's digit comparison."""
    if dealer is None:
        return nl.ltz(_ring(share)).share
    return digits.ltz_ring(share, dealer, shares.rank())


def _ge(a, b_share: torch.Tensor, dealer=None) -> torch.Tensor:
    """Share (scale 1) of [a >= b] for ring values: 1 - [a - b < 0]."""
    return _public(torch.ones_like(b_share)) - _lt(a.share - b_share, dealer)


def clamp_ring(x, bits: int, dealer=None) -> torch.Tensor:
    """Share of the ring value of x clamped to [-2^bits, 2^bits - 1]: one layer of 2n comparisons
    and one of products (min(x, hi) = x - (x - hi) [x > hi], likewise for lo)."""
    hi, lo = (1 << bits) - 1, -(1 << bits)
    over = x.share - _public(torch.full_like(x.share, hi))  # > 0: above the range
    under = _public(torch.full_like(x.share, lo)) - x.share  # > 0: below the range
    stacked = torch.stack([over, under])
    outside = _ge(_ring(stacked), _public(torch.ones_like(stacked)), dealer)  # [excess >= 1]
    fix = shares.ring_mul(_ring(stacked), _ring(outside))  # excess where outside, else 0
    return x.share - fix[0] + fix[1]


def keys(scores, forced: torch.Tensor | None = None, bound_bits: int | None = None, dealer=None):
    """Distinct ring keys [H, n] (see the module doc); ``forced`` is a public bool [n] or [H, n].
    With ``bound_bits`` the ring values are clamped to |.| <= 2^bound_bits first (bisection)."""
    n = scores.shape[-1]
    below = torch.arange(n - 1, -1, -1, dtype=torch.long)  # n-1-i: the lower index wins a tie
    ring = scores.share if bound_bits is None else clamp_ring(scores, bound_bits, dealer)
    share = ring * n + _public(below).expand(scores.shape)
    if forced is not None:
        f = forced.to(torch.bool).expand(scores.shape)
        share = torch.where(f, _public((FORCED_KEY + below).expand(scores.shape)), share)
    return _ring(share)


# --- constructions: keys -> keep bits (shares, scale 1) -------------------------------------------
def keep_argmax(key, k: int, dealer=None):
    """k tournaments; each pick is a one-hot (n equality tests, as two comparisons) that pushes
    the picked key down."""
    n = key.shape[-1]
    keep = torch.zeros_like(key.share)
    current = key
    for _ in range(k):
        d = _argmax(current, dealer).share - _public(torch.arange(n, dtype=torch.long))  # [H, n]
        below = _lt(torch.stack([d, -d]), dealer)  # [d < 0], [d > 0]: one layer
        onehot = _public(torch.ones_like(d)) - below[0] - below[1]  # [d == 0]
        keep = keep + onehot
        current = _ring(current.share - onehot * PUSH_DOWN)
    return keep


def _argmax(x, dealer=None):
    """Secret index (scale 1) of the largest ring value per row: a tournament of comparisons.
    Keys are distinct, so no tie rule is needed here."""
    n = x.shape[-1]
    idx = _ring(_public(torch.arange(n, dtype=torch.long).expand(x.shape).contiguous()))
    while n > 1:
        m = n // 2
        left, right = x[..., 0 : 2 * m : 2], x[..., 1 : 2 * m : 2]
        il, ir = idx[..., 0 : 2 * m : 2], idx[..., 1 : 2 * m : 2]
        take_right = _ring(_lt((left - right).share, dealer))
        delta = crypten.stack([right - left, ir - il])
        picked = _ring(shares.ring_mul(delta, take_right.unsqueeze(0).expand(delta.shape)))
        new_x, new_idx = left + picked[0], il + picked[1]
        if n % 2:
            new_x = crypten.cat([new_x, x[..., n - 1 :]], dim=-1)
            new_idx = crypten.cat([new_idx, idx[..., n - 1 :]], dim=-1)
        x, idx, n = new_x, new_idx, new_x.shape[-1]
    return idx


def keep_allpairs(key, k: int, dealer=None) -> torch.Tensor:
    """rank_i = #{j: key_j > key_i} from one layer of n(n-1)/2 comparisons; keep = [rank < k]."""
    n = key.shape[-1]
    i, j = torch.triu_indices(n, n, 1)
    below = _lt(key.share[..., i] - key.share[..., j], dealer)  # [key_i < key_j]: j beats i
    ones = _public(torch.ones_like(below))
    rank = torch.zeros_like(key.share)
    rank.index_add_(-1, i, below)
    rank.index_add_(-1, j, ones - below)
    return _public(torch.ones_like(rank)) - _ge_count(rank, k, n, dealer)


def keep_allpairs_bounded(scores, k: int, forced: torch.Tensor | None, dealer, check=None) -> torch.Tensor:
    """All-pairs on the scores themselves (no keys): for i < j, j beats i iff s_i - s_j < 0 (equal
    scores: the lower index wins, the keys' rule), one bounded comparison each (|s_i - s_j| < 2^16);
    a pair with a forced item has a public outcome (forced first, then the lower index). The scores
    are clamped to the bound first (``BOUND_RING_BITS``; beyond it they tie, the lower index wins):
    exactly k kept, whatever the scores. With ``check`` (scores -> None) the range is checked
    instead (the caller's guard counts the scores past it and stops the run before anything is
    revealed): one layer of cheap comparisons instead of the clamp's ring comparisons and products."""
    n = scores.shape[-1]
    i, j = torch.triu_indices(n, n, 1)
    in_bits = round(math.log2(scores.encoder.scale))
    if check is not None:
        check(scores)
        ring = scores.share
    else:
        ring = clamp_ring(scores, BOUND_RING_BITS, dealer)
    below = digits.ltz_bounded(ring[..., i] - ring[..., j], dealer, shares.rank(), in_bits)
    if forced is not None:
        f = forced.to(torch.bool).expand(scores.shape)
        fi, fj = f[..., i], f[..., j]
        below = torch.where(fi | fj, _public((fj & ~fi).to(torch.long)), below)
    ones = _public(torch.ones_like(below))
    rank = torch.zeros_like(scores.share)
    rank.index_add_(-1, i, below)
    rank.index_add_(-1, j, ones - below)
    return _public(torch.ones_like(rank)) - _ge_count(rank, k, n, dealer)


def _ge_count(count: torch.Tensor, k: int, n: int, dealer=None) -> torch.Tensor:
    """Share of [count >= k] for a secret count in [0, n]: with a dealer a one-digit comparison
    (1 round), else CrypTen's circuit."""
    diff = count - _public(torch.full_like(count, k))  # in [-k, n - k]
    if dealer is None:
        below = _lt(diff)
    else:
        below = digits.ltz_small(diff, max(1, math.ceil(math.log2(n + 1))), dealer, shares.rank())
    return _public(torch.ones_like(count)) - below


def keep_bisect(key, k: int, value_bits: int, scale_bits: int = 16, radix_bits: int = 1, dealer=None
                ) -> torch.Tensor:
    """The k-th largest key t, ``radix_bits`` bits per step from the top: t is the largest value
    with #{key >= t} >= k. A step compares the keys with the 2^r - 1 candidates t + c 2^j at once
    (one layer), then the counts with k (one layer); the digit is the number of candidates that
    keep >= k (counts fall as the candidate rises)."""
    n, r = key.shape[-1], radix_bits
    bits = value_bits + scale_bits + max(1, math.ceil(math.log2(n))) + 2  # keys in (-2^(bits-2), 2^(bits-2))
    bits = -(-bits // r) * r
    t = _public(torch.full(key.shape[:-1] + (1,), -(1 << (bits - 1)), dtype=torch.long))
    steps = torch.arange(1, 1 << r, dtype=torch.long).view(-1, *([1] * key.dim()))  # [2^r - 1, 1, 1]
    for j in range(bits - r, -1, -r):
        candidates = t + _public(steps << j)  # [2^r - 1, H, 1]
        counts = _ge(key, candidates, dealer).sum(-1, keepdim=True)
        enough = _ge_count(counts, k, n, dealer)
        t = t + enough.sum(0) * (1 << j)
    return _ge(key, t, dealer)


def keep_network(key, k: int, dealer=None) -> torch.Tensor:
    """Bitonic sort (descending) of the keys, padded to a power of two; threshold = sorted[k-1]."""
    n = key.shape[-1]
    size = 1 << max(0, math.ceil(math.log2(n)))
    x = key.share
    if size > n:
        pad = _public(torch.full(x.shape[:-1] + (size - n,), PAD_KEY, dtype=torch.long))
        x = torch.cat([x, pad], dim=-1)
    pos = torch.arange(size)
    block = 2
    while block <= size:
        stride = block // 2
        while stride >= 1:
            lo = pos[(pos & stride) == 0]
            hi = lo + stride
            desc = ((lo & block) == 0).to(torch.long)  # this pair sorts descending (max first)
            a, b = x[..., lo], x[..., hi]
            a_below = _ring(_lt(a - b, dealer))
            swap = shares.ring_mul(_ring(b - a), a_below)  # (b - a) where a < b
            big, small = a + swap, b - swap
            x = x.clone()
            x[..., lo] = small + desc * (big - small)
            x[..., hi] = big - desc * (big - small)
            stride //= 2
        block *= 2
    return _ge(key, x[..., k - 1 : k], dealer)


# --- order-preserving compaction ------------------------------------------------------------------
def compact(keep: torch.Tensor, k: int, out_bits: int = 16, dealer=None):
    """One-hot [H, k, n] (at ``out_bits`` fractional bits) of the kept items in ascending position.

    The kept item with prefix count p_i = sum_{j<=i} keep_j goes to row p_i - 1. With exactly k
    kept, p_i of a kept item lies in the public window [lo_i, lo_i + w - 1], lo_i =
    max(1, k - (n-1-i)), w = min(k, n-k+1). So v_i = keep_i * (p_i - lo_i + 1) (one product; 0 for
    a dropped item) is in 0..w, and item i goes to row lo_i - 2 + v_i. v is converted to binary
    once, its L = ceil(log2(w+1)) low bits back to arithmetic, and the one-hot over 2^L values is a
    product tree (level j: 2^j products; L-1 rounds). Per item: one comparison-sized conversion
    plus < 2w products, instead of k equality tests (each costing a comparison). With a ``dealer``
    no product either: the one-hot of a linear z that equals v where kept is one opening of z + r
    and table entries (``digits.onehot_share``, 1 round).
    """
    n = keep.shape[-1]
    lo = torch.clamp(k - (n - 1 - torch.arange(n)), min=1)  # [n]
    w = min(k, n - k + 1)
    shifted = keep.cumsum(-1) - _public(lo - 1).expand(keep.shape)
    if dealer is not None and dealer.name == "tfp":
        # TFP, no product: z = shifted - (1 - keep) S is linear. A kept item's z = v in 1..w; a dropped
        # one's lies in [-n - S, n - S], which mod 2S is [S - n, S + n], never 0..w (S > n + w).
        # So the one-hot of z mod 2S over 0..w is the one of v (one opening of z + r, 1 round).
        bits = math.ceil(math.log2(n + w + 1)) + 1
        big = 1 << (bits - 1)
        z = shifted - (_public(torch.ones_like(keep)) - keep) * big
        onehot = digits.onehot_share(z, w + 1, bits, dealer, shares.rank())  # [H, n, w + 1]
        return _place(onehot, lo, w, k, keep.shape, out_bits)
    v = _ring(shares.ring_mul(_ring(keep), _ring(shifted)))
    levels = max(1, math.ceil(math.log2(w + 1)))
    if dealer is not None:  # a TTP dealer's tables grow with 2^bits: the product, then 2^levels
        onehot = digits.onehot_share(v.share, w + 1, levels, dealer, shares.rank())  # [H, n, w + 1]
        return _place(onehot, lo, w, k, keep.shape, out_bits)
    binary = v._to_ptype(Ptype.binary)
    binary.share = torch.stack([(binary.share >> j) & 1 for j in range(levels)])
    bits = binary._to_ptype(Ptype.arithmetic, precision=0, bits=1).share  # [L, H, n]
    ones = _public(torch.ones_like(bits[0]))
    onehot = torch.stack([ones - bits[0], bits[0]], dim=-1)  # [H, n, 2]: index = value of bits < 1
    for j in range(1, levels):
        b = bits[j].unsqueeze(-1).expand(onehot.shape).contiguous()
        prod = shares.ring_mul(_ring(onehot), _ring(b))
        onehot = torch.cat([onehot - prod, prod], dim=-1)
    return _place(onehot, lo, w, k, keep.shape, out_bits)


def _place(onehot: torch.Tensor, lo: torch.Tensor, w: int, k: int, shape, out_bits: int):
    """Item i's one-hot entry v = 1..w goes to row lo_i - 2 + v: the [H, k, n] selection."""
    n = shape[-1]
    rows = lo[:, None] - 2 + torch.arange(1, w + 1)[None, :]  # [n, w]: row of entry v = 1..w
    valid = rows < k
    cols = torch.arange(n)[:, None].expand(n, w)
    out = torch.zeros(tuple(shape[:-1]) + (k, n), dtype=torch.long)
    out[..., rows[valid], cols[valid]] = onehot[..., 1 : w + 1][..., valid]
    return shares.mpc_from_share(out * (1 << out_bits), out_bits)


def select(scores, k: int, forced: torch.Tensor | None = None, config: TopkConfig | None = None,
           dealer=None, check=None):
    """Secret one-hot [H, k, n] of the top k per row (ascending position); see the module doc.
    ``dealer``: compare with the dealer's exact ring comparison instead of CrypTen's circuit."""
    config = config or TopkConfig()
    heads, n = scores.shape[0], scores.shape[-1]
    check_topk(scores.shape, k, forced)
    method = choose(heads, n, k, config)
    if k < n and method == "allpairs" and dealer is not None and config.compare == "bounded":
        return compact(keep_allpairs_bounded(scores, k, forced, dealer, check), k, dealer=dealer)
    scale_bits = round(math.log2(scores.encoder.scale))
    key = keys(scores, forced, config.value_bits + scale_bits if method == "bisect" else None, dealer)
    if k == n:  # everything is kept: no comparison
        keep = _public(torch.ones_like(key.share))
    elif method == "argmax":
        keep = keep_argmax(key, k, dealer)
    elif method == "allpairs":
        keep = keep_allpairs(key, k, dealer)
    elif method == "bisect":
        keep = keep_bisect(key, k, config.value_bits, scale_bits, config.radix_bits, dealer)
    else:
        keep = keep_network(key, k, dealer)
    return compact(keep, k, dealer=dealer)

