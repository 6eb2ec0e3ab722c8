"""Per-cluster key bounds kept incrementally: each contiguous cluster of ``size`` cached keys gets its
per-channel max and min computed ONCE, when it fills (Quest pages, MPCache level-2 clusters).

Shared by the policies that score clusters instead of tokens; Backend ops only (``amax``/``amin``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mpcache.backend import Backend, Tensor


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
            new_max, new_min = backend.amax(fresh, 2), backend.amin(fresh, 2)
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


def forced_bonus(count: int, first: bool, last: bool) -> torch.Tensor:
    """A public [count] vector adding a large constant to the first/last cluster's score, so that
    top-k always keeps them (attention sink / most recent) without revealing anything."""
    bonus = torch.zeros(count)
    if count and first:
        bonus[0] = 1e4
    if count and last:
        bonus[-1] = 1e4
    return bonus
