"""Look-once static eviction, shared by SnapKV, MPCache's static stage and H2O's first eviction.

The prompt's last ``window`` tokens are always kept; of the ``cut`` tokens before them the top
``keep - window`` by a score are kept, in ascending position order (so contiguous clusters of kept
tokens stay runs of the prompt). The counts are public, the scores and choice secret under MPC.
The rebuilt cache is a fixed operand: its mask is opened once, here.

Units (``choose(..., unit=u)``): the prefix is kept in whole runs of u tokens, each scored by its best
token, so a sentence one token of which the window attends to is kept whole (a token-level rule keeps
the attended token and drops its neighbours). The prefix's last ``cut % u`` tokens join the window.
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
    unit: int = 1  # the selection picks runs of this many tokens (``cut`` is a multiple of it)


def choose(scores: Tensor, n_top: int, backend: Backend, unit: int = 1, spread: int = 0) -> StaticChoice:
    """Keep the top ``n_top`` of ``scores`` [H or 1, cut] (cut = the scored prefix) and every token
    after the prefix. ``n_top`` = 0 keeps the window alone (a public slice). ``unit`` > 1: the top
    runs of ``unit`` tokens by their best score, as many as fit in ``n_top`` once the prefix's last
    ``cut % unit`` tokens (kept with the window) are counted. ``spread``: a run scores the best of
    itself and its ``spread`` neighbours on each side (a sentence cut by a run boundary stays whole)."""
    cut = scores.shape[-1]
    if unit > 1:
        whole = cut - cut % unit
        n_top = (n_top - (cut - whole)) // unit
        cut = whole
        if n_top > 0:
            scores = backend.amax(scores[:, :whole].reshape(scores.shape[0], whole // unit, unit), 2)
    if spread and n_top > 0:
        scores = neighbourhood_max(scores, spread, backend)
    return StaticChoice(cut, top(backend, scores, n_top) if n_top > 0 else None, unit)


def neighbourhood_max(scores: Tensor, spread: int, backend: Backend) -> Tensor:
    """Each entry of ``scores`` [H, C] -> the max over entries i - spread .. i + spread (the edges
    repeated): one stacked max of 2*spread + 1 shifted copies."""
    c = scores.shape[1]
    padded = backend.cat([scores[:, :1]] * spread + [scores] + [scores[:, c - 1 :]] * spread, dim=1)
    shifted = [padded[None, :, i : i + c] for i in range(2 * spread + 1)]
    return backend.amax(backend.cat(shifted, dim=0), 0)


def compact(x: Tensor, choice: StaticChoice, backend: Backend, fix: bool = True) -> Tensor:
    """x [H, T, m] reduced to the chosen tokens (prefix picks in position order, then the window).
    ``fix``: the result is a cache (masked once under MPC); not for scores that change every step."""
    done = backend.fix if fix else (lambda t: t)
    window = x[:, choice.cut :]
    if choice.selection is None:
        return done(window)
    h, _, m = x.shape
    u = choice.unit  # runs of u tokens: gather rows of the cache viewed as [H, cut/u, u*m]
    picked = backend.gather(choice.selection, x[:, : choice.cut].reshape(h, choice.cut // u, u * m))
    picked = picked.reshape(h, -1, m)
    if choice.cut == x.shape[1]:
        return done(picked)
    return done(backend.cat([picked, window], dim=1))


def evict(cache: LayerCache, choice: StaticChoice, backend: Backend) -> None:
    cache.k = compact(cache.k, choice, backend)
    cache.v = compact(cache.v, choice, backend)
