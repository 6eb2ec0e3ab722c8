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

Nested clusters (:class:`Outer`): a two-level selection (parents, then children among the picked
parents' children) is applied level by level, never composed into one one-hot over all children:
the scores are gathered by the parents' one-hot (or taken from the policy, which gathered them for
its own selection), then by the children's; the probabilities are scattered back the same way. A
composed one-hot [picked, count] would be opened in the scores' gather (with the G·n scores again)
and cost a product to build; the two small one-hots [p1, C1] and [picked, p1*m] were opened already.

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


@dataclass(frozen=True)
class Outer:
    """The parents a nested selection was made inside: ``selection`` [H, picked, n/size] picks
    ``picked`` parents of ``size`` tokens; the rows' own selection picks among their children, in
    gathered order. ``chosen``: the parents' scores [H, picked, G*size] (``_by_cluster`` layout),
    when the policy gathered them already from the same scores attention uses."""

    selection: Tensor
    picked: int
    size: int
    chosen: Tensor | None = None


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
    outer: Outer | None = None  # nested: ``selection`` picks among the children of outer's parents

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
    o = rows.outer
    if o is None:
        picked = b.gather(rows.selection, x[:, :full].reshape(h, rows.count, rows.size * d))
    else:  # the parents' rows, then the children's among them
        parents = b.gather(o.selection, x[:, :full].reshape(h, full // o.size, o.size * d))
        picked = b.gather(rows.selection, parents.reshape(h, o.picked * o.size // rows.size, rows.size * d))
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


def _chosen(b: Backend, rows: SelectedRows, scores: Tensor) -> Tensor:
    """The picked clusters' scores [H, G, picked*size] out of ``scores`` [H, G, n]."""
    sel, size, picked, o = rows.selection, rows.size, rows.picked, rows.outer
    full = rows.count * size
    if o is None:
        return _by_head(b.gather(sel, _by_cluster(scores[:, :, :full], rows.count, size)), picked, size)
    parents = o.chosen
    if parents is None:
        parents = b.gather(o.selection, _by_cluster(scores[:, :, :full], full // o.size, o.size))
    children = o.picked * o.size // size
    inner = _by_cluster(_by_head(parents, o.picked, o.size), children, size)
    return _by_head(b.gather(sel, inner), picked, size)


def _spread(b: Backend, rows: SelectedRows, head: Tensor) -> Tensor:
    """The transpose of :func:`_chosen`: probabilities [H, picked, G*size] of the picked clusters put
    back at their positions among the first count*size tokens, zeros elsewhere -> [H, G, count*size]."""
    sel, count, size, o = rows.selection, rows.count, rows.size, rows.outer
    if o is None:
        return _by_head(b.scatter(sel, head, count), count, size)
    children = o.picked * o.size // size
    inner = _by_head(b.scatter(sel, head, children), children, size)  # [H, G, picked parents' tokens]
    parents = count * size // o.size
    return _by_head(b.scatter(o.selection, _by_cluster(inner, o.picked, o.size), parents), parents, o.size)


def attend(b: Backend, q: Tensor, keys: SelectedRows, values: SelectedRows) -> tuple[Tensor, Tensor]:
    """Attention of q [H, G, d] (already scaled) over the selected rows -> (probs [H, G, m] over the
    selected keys, as a gather would order them; output [H, G, d])."""
    size, picked = keys.size, keys.picked
    n, full = keys.x.shape[1], keys.count * keys.size
    scores = keys.scores if keys.scores is not None else b.matmul_t(q, keys.x)  # [H, G, n]
    chosen = _chosen(b, keys, scores)
    if full < n:
        chosen = b.cat([chosen, scores[:, :, full:]], dim=2)
    probs = b.softmax(chosen) if keys.shift is None else b.softmax(chosen, None, keys.shift)
    head = _by_cluster(probs[:, :, : picked * size], picked, size)
    spread = _spread(b, keys, head)  # zeros at unpicked clusters
    if full < n:
        spread = b.cat([spread, probs[:, :, picked * size :]], dim=2)
    return probs, b.matmul(spread, values.x)
