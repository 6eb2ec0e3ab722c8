"""Exact comparisons for selections (top-k keys, a policy's maxima), cheaper under the fast presets.

A selection must agree with the plaintext one, ties and near-ties included, so its comparisons are
exact: CrypTen's circuit (~8 rounds, 432 B), or with the fast presets (``comparison = "dealer"``)
the dealer's digit comparison over the whole ring (``digits.ltz_ring``: 3 rounds and 144 B with
TFP). The fast presets' own "value" comparison resolves only 2^-8 and is not used here.
"""

from __future__ import annotations

import math

from mpcache.backend import Approximations
from protocols import nonlinear as nl
from protocols.accounting import NETWORKS

# Bytes per element of a maximum: an exact ring comparison plus the selection product (binary
# tournament); the grouped max's 28 comparisons per 8 elements plus equality openings and products.
BINARY_BYTES, GROUPED_BYTES = 176, 631


class RingNumerics(nl.Numerics):
    """Numerics whose comparisons are exact on the whole ring (the dealer's digits)."""

    def ltz(self, x, kind: str = "value"):
        from protocols import digits

        return nl._mpc_from_share(digits.ltz_ring(x._tensor.share, self.dealer, nl._rank()), 0)


def numerics(approx: Approximations, dealer) -> nl.Numerics:
    """The selection's numerics: ring comparisons by ``dealer`` with the fast presets, else CrypTen's
    (``.dealer`` is None then)."""
    if approx.comparison == "dealer" and dealer is not None:
        return RingNumerics(approx, dealer)
    return nl.CRYPTEN


def _lan_s(nbytes: float, rounds: int) -> float:
    lan = NETWORKS["lan"]
    return nbytes * 8 / lan.bandwidth_bits_s + rounds * lan.rtt_s


def grouped_is_cheaper(rows: int, m: int, arity: int) -> bool:
    """Whether the grouped max (``nonlinear.group_max``: 5 rounds a level of ``arity``) beats the
    binary tournament (4 rounds a level) on the LAN preset for ``rows`` maxima of m elements: yes
    over a few hundred clusters, no over a whole cache's tokens (its ~3.5x comparisons cost more)."""
    arity = min(arity, m)
    if arity <= 2:
        return False
    binary = _lan_s(rows * (m - 1) * BINARY_BYTES, 4 * math.ceil(math.log2(m)))
    levels = math.ceil(math.log(m) / math.log(arity) - 1e-9)
    grouped = _lan_s(rows * (m - 1) * GROUPED_BYTES * arity / 8, 5 * levels)
    return grouped < binary


def exact_max(x, nm: nl.Numerics, with_index: bool = False):
    """Exact max (and first argmax) over the last dim with the selection's numerics."""
    m = x.shape[-1]
    if nm.dealer is not None and m > 1 and grouped_is_cheaper(x.numel() // m, m, nm.approx.max_arity):
        return nl.group_max(x, with_index, nm)
    return nl.tree_max(x, with_index, nm)
