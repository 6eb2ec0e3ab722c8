"""Per-cluster key bounds kept incrementally: each contiguous cluster of ``size`` cached keys gets its
per-channel max and min computed ONCE, when it fills (Quest pages, MPCache level-2 clusters).

Shared by the policies that score clusters instead of tokens; Backend ops only (``amax``/``amin``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mpcache.core.backend import Backend, Tensor
from mpcache.core.selected import Outer


@dataclass
class ClusterBounds:
    """Max/min over each full cluster of ``size`` tokens: ``kmax``/``kmin`` [Hkv, C, d]."""

    size: int
    kmax: Tensor | None = None
    kmin: Tensor | None = None
    count: int = 0  # full clusters summarised so far
    computed: int = 0  # clusters summarised in total (tests check each is done once)
    calls: list[int] = field(default_factory=list)  # clusters summarised per update (diagnostics)

    def update(self, keys: Tensor, backend: Backend) -> int:
        """Summarise the clusters of ``keys`` [Hkv, n, d] that filled since the last call.

        Keys must only grow at the end between calls (decode appends). Returns the full-cluster count.
        """
        full = keys.shape[1] // self.size
        if full > self.count:
            h, _, d = keys.shape
            fresh = keys[:, self.count * self.size : full * self.size].reshape(
                h, full - self.count, self.size, d
            )
            new_max, new_min = max_and_min(fresh, 2, backend)
            if self.kmax is None:
                self.kmax, self.kmin = new_max, new_min
            else:
                self.kmax = backend.cat([self.kmax, new_max], dim=1)
                self.kmin = backend.cat([self.kmin, new_min], dim=1)
            self.computed += full - self.count
            self.calls.append(full - self.count)
            self.count = full
        return self.count

    def nbytes(self) -> int:
        total = 0
        for t in (self.kmax, self.kmin):
            if t is not None and hasattr(t, "element_size"):
                total += t.numel() * t.element_size()
        return total


def max_and_min(x: Tensor, dim: int, backend: Backend) -> tuple[Tensor, Tensor]:
    """Max and min of ``x`` [H, ...] over ``dim`` in ONE reduction (under MPC: one tournament, the
    comparisons of both in the same rounds): the max of [x; -x] stacked along dim 0."""
    h = x.shape[0]
    both = backend.amax(backend.cat([x, x * -1.0], dim=0), dim)
    return both[:h], both[h:] * -1.0


def ends_mask(count: int, first: bool, last: bool, heads: int = 1) -> torch.Tensor:
    """Public bool mask [heads, count]: the first/last cluster always kept (sink / most recent)."""
    mask = torch.zeros(heads, count, dtype=torch.bool)
    if count and first:
        mask[:, 0] = True
    if count and last:
        mask[:, -1] = True
    return mask


def top(backend: Backend, scores: Tensor, k: int, forced: torch.Tensor | None = None) -> Tensor:
    """``backend.topk`` (ascending position order) with a public mask of items always selected."""
    if forced is None or not bool(forced.any()):
        return backend.topk(scores, k)
    return backend.topk(scores, k, forced=forced)


def gather_clusters(backend: Backend, selection: Tensor, x: Tensor, count: int, size: int, picked: int,
                    scores: Tensor | None = None, shift: Tensor | None = None, outer: Outer | None = None
                    ) -> Tensor:
    """The ``picked`` clusters of ``size`` tokens chosen by ``selection`` among the first ``count``
    clusters of x [H, n, d], then every token after them (the tail not yet in a full cluster).

    ``Backend.select_clusters``: the gathered rows, or under MPC rows the transformer attends
    through the cache's own mask (``mpcache.core.selected``), so the gathered keys are never opened."""
    if scores is None and shift is None and outer is None:
        return backend.select_clusters(selection, x, count, size, picked)
    return backend.select_clusters(selection, x, count, size, picked, scores, shift, outer)
