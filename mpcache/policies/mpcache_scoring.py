"""MPCache's scoring helpers (accuracy options of :class:`MPCachePolicy`), Backend ops only.

- Static importance: which prompt tokens the observation window attends to, either averaged over
  all heads of the layer (one kept set per layer, the original) or per KV head (the max over the
  query heads of its group, so one retrieval head pointing at a token is enough to keep it).
- Cluster similarity: the original linear score q.c~ with c~ = alpha*max + (1-alpha)*min, or the
  sign-aware mix: per channel alpha*max + (1-alpha)*min where q_c >= 0 and alpha*min +
  (1-alpha)*max where q_c < 0. With alpha = 1 that is Quest's upper bound sum_c max(q_c*max_c,
  q_c*min_c). It equals q.(min + (1-alpha)*range) + (2*alpha-1)*relu(q).range: two matmuls with
  per-cluster summaries computed once, plus one relu (a comparison per channel of q) per step.
- Level-2 token max (score2 = max): a level-2 cluster's score is the max over its tokens of q.k,
  computed only inside the level-1 clusters kept (a matmul over r1 of the cache plus comparisons;
  still no exp or softmax over the cache).
"""

from __future__ import annotations

import math

from mpcache.core.backend import Backend, Tensor

STATIC_HEADS = ("mean", "kv")
IMPORTANCE = ("max", "sum")  # over the static window's rows
SCORES1 = ("summary", "qsum")
SCORES = ("linear", "signed")
GROUP = ("sum", "max", "maxnorm", "meannorm", "qsum")
SCORES2 = ("summary", "max")
# Each option of MPCachePolicy with a fixed set of values -> that set.
OPTION_VALUES = {"static_heads": STATIC_HEADS, "score": SCORES, "group": GROUP, "score2": SCORES2,
                 "score1": SCORES1, "importance": IMPORTANCE}


def static_importance(probs: Tensor, cut: int, heads: str, importance: str, backend: Backend) -> Tensor:
    """Importance of the first ``cut`` prompt tokens from window probabilities [Hkv, g, W, T].

    heads = mean: one row [1, cut] (head mean, then max or sum over window rows);
    heads = kv: one row per KV head [Hkv, cut] (max over the group's query heads and window rows,
    or for importance = sum: the window sum, then the max over the group)."""
    prefix = probs[..., :cut]
    if heads == "mean":
        attn = backend.sum(backend.sum(prefix, 0), 0) * (1.0 / (probs.shape[0] * probs.shape[1]))
        score = backend.amax(attn, 0) if importance == "max" else backend.sum(attn, 0)
        return score.reshape(1, cut)
    hkv, g, w, _ = prefix.shape
    if importance == "max":
        return backend.amax(prefix.reshape(hkv, g * w, cut), 1)
    return backend.amax(backend.sum(prefix, 2), 1)


def relu(x: Tensor, backend: Backend) -> Tensor:
    """max(x, 0) elementwise, as a max over a stacked pair (one secret comparison per entry)."""
    return backend.amax(backend.cat([x[None], x[None] * 0.0], dim=0), 0)


def summaries(kmax: Tensor, kmin: Tensor, alpha: float, score: str) -> tuple[Tensor, Tensor | None]:
    """Per-cluster summaries (computed once per cluster): linear -> (c~, None); signed ->
    (min + (1-alpha)*range, range)."""
    if score == "linear":
        return kmax * alpha + kmin * (1.0 - alpha), None
    rng = kmax - kmin
    return kmin + rng * (1.0 - alpha), rng


def cluster_scores(
    q: Tensor, base: Tensor, rng: Tensor | None, alpha: float, group: str, backend: Backend
) -> Tensor:
    """Scores [Hkv, C] of the clusters for the decode queries ``q`` [Hkv, g, d].

    ``base``/``rng`` [Hkv, C, d] from :func:`summaries`. ``group`` combines the query heads of a KV
    head: sum (one matmul with the summed query when linear), qsum (the summed query, also when
    signed), max, maxnorm or meannorm (see :func:`combine`)."""
    hkv, g, _ = q.shape
    if group == "qsum":
        q = backend.sum(q, 1, keepdim=True)
    if rng is None and group in ("sum", "qsum"):
        qs = backend.sum(q, 1, keepdim=True)
        return backend.matmul_t(qs, base).reshape(hkv, -1)
    s = backend.matmul_t(q, base)  # [Hkv, g, C]
    if rng is not None and alpha != 0.5:
        s = s + backend.matmul_t(relu(q, backend), rng) * (2.0 * alpha - 1.0)
    return combine(s, group, backend)


def combine(s: Tensor, group: str, backend: Backend) -> Tensor:
    """[Hkv, g, C] per query head -> [Hkv, C]: sum (qsum: one head left), max, maxnorm (max over the
    heads of each head's score minus its best cluster's, so every head's favourite clusters rank
    first) or meannorm (minus the head's mean over the clusters: linear, no comparisons; a head's
    favourites rank by how far they stand above its average cluster)."""
    if group in ("sum", "qsum"):
        return backend.sum(s, 1)
    if group == "maxnorm":
        s = s - backend.amax(s, 2, keepdim=True)
    elif group == "meannorm":
        s = s - backend.sum(s, 2, keepdim=True) * (1.0 / s.shape[2])
    return backend.amax(s, 1)


def token_max_scores(q: Tensor, keys: Tensor, size: int, group: str, backend: Backend) -> Tensor:
    """Scores [Hkv, n/size] of contiguous clusters of ``size`` keys [Hkv, n, d]: the max over each
    cluster's tokens of q.k (a matmul, then comparisons; no exp), combined over the group (see
    :func:`combine`); qsum sums the group's queries first: one max per KV head (g times fewer
    comparisons), the max of the summed logits instead of a combination of per-head maxima."""
    if group == "qsum":
        q = backend.sum(q, 1, keepdim=True)
    hkv, g, _ = q.shape
    logits = backend.matmul_t(q, keys)  # [Hkv, g, n]
    best = backend.amax(logits.reshape(hkv, g, keys.shape[1] // size, size), 3)
    return combine(best, group, backend)


def parent_token_max_scores(q: Tensor, keys: Tensor, sel1: Tensor, picked: int, parent: int, size: int,
                            group: str, backend: Backend) -> Tensor:
    """:func:`token_max_scores` of the children (``size`` tokens) of the ``picked`` parents (``parent``
    tokens) that ``sel1`` chose among the full parents of ``keys`` [Hkv, n, d] -> [Hkv, picked*parent/size].

    Scores, not keys, are gathered: q.k over the whole cache is one product with the cached keys
    (under MPC a fixed operand: it opens q only), then one gather of the picked parents' g*parent
    scores (opens the one-hot and g*n scores); gathering the keys first would open picked*parent*d
    fresh key entries per KV head in the product with q (d = 64 against g = 3 here). Only the
    candidates' scores enter comparisons, so the exact token work stays a fraction of the cache."""
    if group == "qsum":
        q = backend.sum(q, 1, keepdim=True)
    hkv, g, _ = q.shape
    count = keys.shape[1] // parent
    logits = backend.matmul_t(q, keys)  # [Hkv, g, n]
    by_parent = logits.reshape(hkv, g, count, parent).permute(0, 2, 1, 3).reshape(hkv, count, g * parent)
    chosen = backend.gather(sel1, by_parent).reshape(hkv, picked, g, parent).permute(0, 2, 1, 3)
    best = backend.amax(chosen.reshape(hkv, g, picked * parent // size, size), 3)
    return combine(best, group, backend)


def shared_token_max(logits: Tensor, full: int, sel1: Tensor | None, picked: int, parent: int, size: int,
                     group: str, backend: Backend, want_shift: bool
                     ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Child scores [Hkv, C] from the attention's own scores ``logits`` [Hkv, g, n] (q scaled as
    attention scales it, over the whole cache: computed once, reused by attention), and with
    ``want_shift`` (group = maxnorm) the softmax shift [Hkv, g, 1]: each head's max over the
    candidate children and the tail, a by-product of maxnorm's head maxima (the same comparison
    layers: the head max and the shift are one stacked max).

    Candidates: the children of the ``picked`` parents ``sel1`` chose (their scores gathered), or
    every full child of the first ``full`` tokens. The shift bounds every score attention will see
    (picked children are candidates; the tail is included) and equals their max when each head's
    best child is picked (maxnorm ranks it first; the caller asks only when k2 leaves room).
    Third: the picked parents' gathered scores [Hkv, picked, g*parent] (attention reuses them), or None."""
    hkv, g, n = logits.shape
    cand, chosen = logits[..., :full], None
    if sel1 is not None:
        count = full // parent
        by_parent = cand.reshape(hkv, g, count, parent).permute(0, 2, 1, 3).reshape(hkv, count, g * parent)
        chosen = backend.gather(sel1, by_parent)
        cand = chosen.reshape(hkv, picked, g, parent).permute(0, 2, 1, 3)
    c = cand.reshape(hkv, g, -1).shape[2] // size
    rows = cand.reshape(hkv, g, c, size)
    tail = n - full
    t = math.ceil(tail / size) if want_shift and tail else 0
    if t:  # the tail as t more rows, padded with copies of its last score (a max ignores copies)
        pieces = [logits[..., full:]] + [logits[..., n - 1 :]] * (t * size - tail)
        rows = backend.cat([rows, backend.cat(pieces, dim=2).reshape(hkv, g, t, size)], dim=2)
    best = backend.amax(rows, 3)  # [Hkv, g, c + t]
    if not want_shift:
        return combine(best, group, backend), None, chosen
    if t:  # head max over the children only (maxnorm), shift over children + tail: one stacked max
        own = backend.cat([best[..., :c]] + [best[..., :1]] * t, dim=2)
        both = backend.amax(backend.cat([own[None], best[None]], dim=0), 3, keepdim=True)
        head, shift = both[0], both[1]
    else:
        head = shift = backend.amax(best, 2, keepdim=True)
    return backend.amax(best[..., :c] - head, 1), shift, chosen
