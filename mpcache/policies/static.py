"""Look-once static eviction, shared by SnapKV, MPCache's static stage and H2O's first eviction.

The prompt's last ``window`` tokens are always kept; of the ``cut`` tokens before them the top
``keep - window`` by a score are kept, in ascending position order (so contiguous clusters of kept
tokens stay runs of the prompt). The counts are public, the scores and choice secret under MPC.
The rebuilt cache is a fixed operand: its mask is opened once, here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpcache.core.backend import Backend, Tensor
from mpcache.core.cache import LayerCache
from mpcache.policies.clusters import top


@dataclass
class StaticChoice:
    """Which prompt tokens a static eviction keeps: ``selection`` of the first ``cut`` (None: none
    of them), then all tokens from ``cut`` on (the window)."""

    cut: int
    selection: Tensor | None


def choose(scores: Tensor, n_top: int, backend: Backend) -> StaticChoice:
    """Keep the top ``n_top`` of ``scores`` [H or 1, cut] (cut = the scored prefix) and every token
    after the prefix. ``n_top`` = 0 keeps the window alone (a public slice)."""
    cut = scores.shape[-1]
    return StaticChoice(cut, top(backend, scores, n_top) if n_top > 0 else None)


def compact(x: Tensor, choice: StaticChoice, backend: Backend, fix: bool = True) -> Tensor:
    """x [H, T, m] reduced to the chosen tokens (prefix picks in position order, then the window).
    ``fix``: the result is a cache (masked once under MPC); not for scores that change every step."""
    done = backend.fix if fix else (lambda t: t)
    window = x[:, choice.cut :]
    if choice.selection is None:
        return done(window)
    picked = backend.gather(choice.selection, x[:, : choice.cut])
    if choice.cut == x.shape[1]:
        return done(picked)
    return done(backend.cat([picked, window], dim=1))


def evict(cache: LayerCache, choice: StaticChoice, backend: Backend) -> None:
    cache.k = compact(cache.k, choice, backend)
    cache.v = compact(cache.v, choice, backend)
