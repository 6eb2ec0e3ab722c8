"""Exact comparisons for selections (top-k keys, a policy's maxima).

A selection must agree with the plaintext one, ties and near-ties included, so its comparisons are
exact: the dealer's digit comparison, in every approximation preset, since it changes no value.
By default (``compare=bounded``) of differences |x| < 2^16 at 16 fractional bits in one 32-bit
digit (``digits.ltz_bounded``: 1 round and 16 B with TFP), else over the whole ring
(``digits.ltz_ring``: 2 rounds and 80 B; CrypTen's circuit: ~8 rounds, 432 B). The fast presets'
own "value" comparison resolves only 2^-8 and is not used here.

Past its bound the bounded comparison's sign wraps, the comparisons stop being transitive and a
selection could keep 0 or 2 items for one slot. So the values are first clamped to the bound
(:func:`clamp_to_bound`: |v| <= 2^15, every difference then inside it; n ring comparisons, not
n^2): beyond it values tie at the clamp and the lower index wins, so a selection is always exactly
k distinct items, and within it nothing changes.
"""

from __future__ import annotations

import math

from mpcache.core.approximations import Approximations
from protocols.net.accounting import NETWORKS
from protocols.numerics import digits
from protocols.numerics import nonlinear as nl
from protocols.numerics.topk import BOUND_RING_BITS, clamp_ring
from protocols.ring import shares

COMPARES = ("bounded", "ring")


class RingNumerics(nl.Numerics):
    """Numerics whose comparisons are exact on the whole ring (the dealer's digits)."""

    def ltz(self, x, kind: str = "value"):
        return shares.mpc_from_share(digits.ltz_ring(x._tensor.share, self.dealer, shares.rank()), 0)

    def cmp_digits(self) -> int:
        return digits.RING_SPECS[self.dealer.name].digits


class BoundedNumerics(RingNumerics):
    """Exact comparisons of differences |x| < 2^16 (at 16 fractional bits): the dealer's digit
    comparison in one 32-bit digit (``digits.ltz_bounded``: 1 round, 16 B with TFP)."""

    def ltz(self, x, kind: str = "value"):
        in_bits = int(round(math.log2(x._tensor.encoder.scale)))
        below = digits.ltz_bounded(x._tensor.share, self.dealer, shares.rank(), in_bits)
        return shares.mpc_from_share(below, 0)

    def cmp_digits(self) -> int:
        return digits.BOUNDED_SPECS[self.dealer.name].digits


def clamp_to_bound(x, dealer):
    """x (an MPCTensor) with its ring values clamped to the bounded comparison's range
    (``BOUND_RING_BITS``): exact ring comparisons of the n values, one product layer."""
    bits = round(math.log2(x._tensor.encoder.scale))
    return shares.mpc_from_share(clamp_ring(x._tensor, BOUND_RING_BITS, dealer), bits)


def numerics(approx: Approximations, dealer, compare: str = "bounded") -> nl.Numerics:
    """The selection's numerics: the dealer's exact comparisons (every preset: a selection is exact
    either way, so this is not an approximation choice), of bounded differences (``compare=bounded``)
    or over the whole ring; without a dealer CrypTen's (``.dealer`` is None then)."""
    if compare not in COMPARES:
        raise ValueError(f"unknown selection comparison {compare!r} ({', '.join(COMPARES)})")
    if dealer is not None:
        return BoundedNumerics(approx, dealer) if compare == "bounded" else RingNumerics(approx, dealer)
    return nl.CRYPTEN


def _lan_s(nbytes: float, rounds: int) -> float:
    lan = NETWORKS["lan"]
    return nbytes * 8 / lan.bandwidth_bits_s + rounds * lan.rtt_s


def comparison_cost(digits: int) -> tuple[int, int]:
    """(online bytes, rounds) of one digit comparison: the opening of c, then a product tree over
    the digits (4 products per merge of two digit blocks, 2 where the lowest block or the last
    merge is involved; 32 B a product). 1 digit: 16 B, 1 round; 2: 80 B, 2 rounds; 3: 144 B, 3."""
    products = max(0, 4 * (digits - 1) - 4) if digits > 2 else 2 * (digits - 1)
    return 16 + 32 * products, 1 + math.ceil(math.log2(digits))


def lan_cost(rows: int, m: int, arity: int, digits: int) -> float:
    """Estimated LAN seconds of ``rows`` maxima of m elements: the binary tournament (``arity`` 2:
    a comparison and a product a level) or the grouped max (``nonlinear.group_max``: a level of
    ``arity`` is one comparison layer, an equality test and a product)."""
    cmp_bytes, cmp_rounds = comparison_cost(digits)
    if arity <= 2:
        return _lan_s(rows * (m - 1) * (cmp_bytes + 32), (cmp_rounds + 1) * math.ceil(math.log2(m)))
    levels = math.ceil(math.log(m) / math.log(arity) - 1e-9)
    per_element = arity / 2 * cmp_bytes + arity / (arity - 1) * 48  # + equality opening, product
    return _lan_s(rows * (m - 1) * per_element, (cmp_rounds + 2) * levels)


def best_arity(rows: int, m: int, digits: int, widest: int = 64) -> int:
    """The tournament arity (2, 4, 8, ... up to ``widest`` and m) with the least LAN estimate:
    e.g. 16 for 9 maxima over 128 clusters (2 levels instead of 3 at arity 8, 7 binary), 2 for
    a thousand maxima over 16 tokens (wider groups cost a/2 comparisons per element)."""
    arities = [2] + [a for a in (4, 8, 16, 32, 64) if a <= min(widest, max(m, 2))]
    if m > 2 and m <= widest and m not in arities:
        arities.append(m)
    return min(arities, key=lambda a: (lan_cost(rows, m, a, digits), a))


def exact_max(x, nm: nl.Numerics, with_index: bool = False):
    """Exact max (and first argmax) over the last dim with the selection's numerics."""
    m = x.shape[-1]
    if isinstance(nm, BoundedNumerics) and m > 1:
        x = clamp_to_bound(x, nm.dealer)  # past the bound: ties at the clamp, never 0 or 2 winners
    if nm.dealer is not None and m > 1:
        arity = best_arity(x.numel() // m, m, nm.cmp_digits())
        if arity > 2:
            return nl.group_max(x, with_index, nm, arity)
    return nl.tree_max(x, with_index, nm)
