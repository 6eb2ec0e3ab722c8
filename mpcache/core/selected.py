"""Attention over selected clusters of a cache WITHOUT materialising the gathered keys and values.

A dynamic policy (MPCache, Quest) attends to ``picked`` whole clusters of ``size`` tokens chosen by
a selection among the first ``count`` clusters of the cache, plus the tail after them. Gathering
the clusters' keys and values gives fresh secret rows; under MPC their product with the query (and
with the probabilities) must open them: picked·size·d per KV head, for K and for V.

The cache is a fixed operand (its mask opened once). So attend through it instead:

    scores = q · K^T          over the whole cache      (opens q only)
    chosen = selection · scores, by cluster              (opens the one-hot and the G·n scores)
    probs  = softmax([chosen, tail scores])               (the same softmax as over gathered keys)
    spread = selection^T · probs, by cluster              (zeros at unpicked clusters)
    out    = [spread, tail probs] · V                     (opens the G·n probabilities only)

which is exactly the attention over the gathered keys/values (unpicked clusters get probability
0), and opens G·n + G·n + picked·size·G + 2·picked·count elements per KV head instead of
2·picked·size·d + G·(picked·size + tail) (G = query heads per KV head, d = 64).

Backends opt in through ``Backend.select_clusters``: ``PlainBackend`` gathers (cheaper there), the
MPC backend returns :class:`SelectedRows`, which the transformer attends with :func:`attend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Tensor = Any


class Backend(Protocol):
    """The ops of ``mpcache.core.backend.Backend`` that attention over selected rows uses (a
    protocol here: the backend module builds on this one)."""

    def gather(self, selection: Tensor, x: Tensor) -> Tensor: ...
    def scatter(self, selection: Tensor, x: Tensor, n: int) -> Tensor: ...
    def fix(self, x: Tensor) -> Tensor: ...
    def cat(self, tensors: Sequence[Tensor], dim: int) -> Tensor: ...
    def matmul(self, a: Tensor, b: Tensor) -> Tensor: ...
    def matmul_t(self, a: Tensor, b: Tensor) -> Tensor: ...
    def softmax(self, scores: Tensor, mask: Any = None, shift: Any = None) -> Tensor: ...


@dataclass
class SelectedRows:
    """The rows of ``x`` [H, n, d] a policy attends to: the ``picked`` clusters of ``size`` tokens
    that ``selection`` [H or 1, picked, count] chooses among the first ``count``, then the tail."""

    selection: Tensor
    x: Tensor
    count: int
    size: int
    picked: int
    # Optional, from the policy's selection of this step: q.x^T over the whole x (already scaled as
    # attention scales q), so attention does not compute it twice, and an upper bound of each row's
    # max over the picked rows and the tail (the softmax shift: no max tournament of its own).
    scores: Tensor | None = None
    shift: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        h, n, d = self.x.shape
        return h, self.picked * self.size + n - self.count * self.size, d


def materialize(b: Backend, rows: SelectedRows) -> Tensor:
    """The selected rows themselves [H, picked*size + tail, d]: one gather of x viewed
    cluster-major [H, count, size*d] (under MPC a product of the one-hot with x's existing mask)."""
    x = rows.x
    h, n, d = x.shape
    full = rows.count * rows.size
    picked = b.gather(rows.selection, x[:, :full].reshape(h, rows.count, rows.size * d))
    picked = picked.reshape(h, rows.picked * rows.size, d)
    if full == n:
        return b.fix(picked)
    return b.cat([picked, x[:, full:]], dim=1)


def _by_cluster(x: Tensor, count: int, size: int) -> Tensor:
    """[H, G, count*size] -> [H, count, G*size] (cluster-major rows)."""
    h, g, _ = x.shape
    return x.reshape(h, g, count, size).permute(0, 2, 1, 3).reshape(h, count, g * size)


def _by_head(x: Tensor, count: int, size: int) -> Tensor:
    """[H, count, G*size] -> [H, G, count*size] (the inverse of :func:`_by_cluster`)."""
    h = x.shape[0]
    return x.reshape(h, count, -1, size).permute(0, 2, 1, 3).reshape(h, -1, count * size)


def attend(b: Backend, q: Tensor, keys: SelectedRows, values: SelectedRows) -> tuple[Tensor, Tensor]:
    """Attention of q [H, G, d] (already scaled) over the selected rows -> (probs [H, G, m] over the
    selected keys, as a gather would order them; output [H, G, d])."""
    sel, count, size, picked = keys.selection, keys.count, keys.size, keys.picked
    n, full = keys.x.shape[1], keys.count * keys.size
    scores = keys.scores if keys.scores is not None else b.matmul_t(q, keys.x)  # [H, G, n]
    chosen = _by_head(b.gather(sel, _by_cluster(scores[:, :, :full], count, size)), picked, size)
    if full < n:
        chosen = b.cat([chosen, scores[:, :, full:]], dim=2)
    probs = b.softmax(chosen) if keys.shift is None else b.softmax(chosen, None, keys.shift)
    head = _by_cluster(probs[:, :, : picked * size], picked, size)
    spread = _by_head(b.scatter(sel, head, count), count, size)  # zeros at unpicked clusters
    if full < n:
        spread = b.cat([spread, probs[:, :, picked * size :]], dim=2)
    return probs, b.matmul(spread, values.x)
