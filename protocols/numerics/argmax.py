"""The greedy next token under 2PC: the argmax over the vocabulary's logits.

``row`` (the old way): ``nonlinear.row_max`` with the approximation preset's comparisons (with
``fast``: the dealer's "value" comparison, which resolves 2^-8, in all-pairs groups): about 390 B
per logit, 19.3 MB per token over SmolLM2's 49,152 logits, more than all of attention at 10 %.

``bounded`` (the default): the selections' bounded comparison (``digits.ltz_bounded``: exact for
differences |x| < 2^16 at 16 fractional bits, 1 round and 16 B with TFP) in the tournament
``selectcmp.best_arity`` picks for the row. A bounded comparison is exact only when every logit has
|x| < 2^15; the selections clamp their inputs to that range (2 ring comparisons and 2 products per
element), which would cost more than the tournament itself. Here the logits are *checked* instead
of clamped: the number of logits outside +-(2^15 - 2) joins the guard's count for the token
(``Guard.verify`` opens it once with the other checks and stops the run when it is not 0), so a
revealed token always comes from an exact tournament. The check's comparisons are one-digit ones of
the logit's integer part (exact for |x| < 2^31: a logit is the final norm's output, bounded by
sqrt(d) times the norm weight, dotted with a public-size embedding row, far below that).
Ties go to the lower index, as ``torch.argmax`` does, so the token equals the plaintext one.
"""

from __future__ import annotations

import torch

from protocols.numerics import digits, selectcmp
from protocols.numerics import nonlinear as nl
from protocols.ring.tables import BOUNDED_SPECS, DigitSpec

ARGMAX = ("bounded", "row")
SELECTION_RANGE = ("check", "clamp")
# Below the bounded comparison's 2^15 by 2 units: the check's folded truncation may read a value
# one unit off (``trunc.open_shifted``), never more.
CHECK_BOUND = 2**15 - 2
# Added to a softmax shift a policy found (``MPCBackend.softmax``): the gathered scores may read a
# unit above the bound they were found from (a one-hot product's truncation); exp(-y) needs y >= 0.
SHIFT_MARGIN = 2.0**-8


def out_of_range_count(x, dealer, rank: int, bound: int = CHECK_BOUND) -> torch.Tensor:
    """Share (ring integer) of the number of entries of x (16 fractional bits) with |x| > bound:
    2 one-digit comparisons per entry of the integer part (exact for |x| < 2^31), no product."""
    share = x._tensor.share.reshape(-1)
    base = BOUNDED_SPECS[dealer.name]
    spec = DigitSpec(0, base.digits, base.digit_bits)
    b = (bound << 16) if rank == 0 else 0
    stacked = torch.cat([b - share, share + b])  # < 0 where x > bound or x < -bound
    return digits.ltz_share(stacked, spec, dealer, rank, in_bits=16).sum().reshape(1)


def checked_max(x, nm: nl.Numerics, rank: int, with_index: bool = False):
    """(row max [and first index], out-of-range count share) of x [..., m] by the bounded tournament;
    the count is None (and the preset's ``row_max`` runs) without a dealer."""
    if nm.dealer is None:
        return (*_as_tuple(nl.row_max(x, with_index, nm)), None)
    bounded = selectcmp.numerics(nm.approx, nm.dealer, "bounded")
    count = out_of_range_count(x, nm.dealer, rank)
    m = x.shape[-1]
    arity = selectcmp.best_arity(x.numel() // m, m, bounded.cmp_digits())
    if arity > 2:
        return (*_as_tuple(nl.group_max(x, with_index, bounded, arity)), count)
    return (*_as_tuple(nl.tree_max(x, with_index, bounded)), count)


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def guarded_max(x, nm: nl.Numerics, rank: int, guard, name: str, with_index: bool = False) -> tuple:
    """:func:`checked_max` whose range count joins ``guard`` (``Guard.add``) under ``name``."""
    *out, count = checked_max(x, nm, rank, with_index)
    if count is not None:
        guard.add(f"{name} past the comparison's range", count)
    return tuple(out)


def vocab_argmax(last, nm: nl.Numerics, rank: int, guard, method: str = "bounded"):
    """(max, secret index) of the logits row ``last`` [1, V] (``method``: see the module doc)."""
    if method not in ARGMAX:
        raise ValueError(f"unknown argmax {method!r} ({', '.join(ARGMAX)})")
    if method == "row":
        return nl.row_max(last, with_index=True, nm=nm)
    return guarded_max(last, nm, rank, guard, "logits", with_index=True)


def selection_max(x, nm: nl.Numerics, rank: int, guard, how: str = "check"):
    """A selection's exact max over the last dim [..., 1] (``MPCBackend.amax``): with bounded
    numerics and ``how=check`` the inputs' range is counted for the guard (2 one-digit comparisons
    per element, no product) instead of clamped (``selectcmp.clamp_to_bound``: 2 ring comparisons
    and 2 products per element, ~7x the bytes); else ``selectcmp.exact_max``."""
    if how not in SELECTION_RANGE:
        raise ValueError(f"unknown selection range handling {how!r} ({', '.join(SELECTION_RANGE)})")
    if how == "clamp" or not isinstance(nm, selectcmp.BoundedNumerics) or x.shape[-1] == 1:
        return selectcmp.exact_max(x, nm)
    return guarded_max(x, nm, rank, guard, "selection scores")[0]


def softmax_max(method: str, shift, nm: nl.Numerics, rank: int, guard):
    """``layers.softmax``'s max function: a policy's ``shift`` (a bound of each row's max it found
    during its selection) plus ``SHIFT_MARGIN``; else the bounded tournament with the range count
    for the guard (``method=bounded``), or None: the preset's ``row_max`` (``method=row``)."""
    if shift is not None:
        return lambda x: shift + SHIFT_MARGIN
    if method == "row":
        return None
    return lambda x: guarded_max(x, nm, rank, guard, "attention scores")[0]


def range_checker(guard, dealer, rank: int, how: str = "check"):
    """For ``topk.select``: a callable adding the count of scores past the bounded comparison's
    range to ``guard`` (``how=check``), or None: the scores are clamped (``how=clamp``, no dealer)."""
    if how == "clamp" or dealer is None:
        return None
    return lambda x: guard.add("top-k scores past the comparison's range",
                               out_of_range_count(x, dealer, rank))
