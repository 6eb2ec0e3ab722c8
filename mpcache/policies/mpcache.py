"""MPCache (DESIGN §4): look-once static eviction, two-level dynamic cluster selection with a linear
similarity, and cross-layer sharing of selections. Every stage can be switched off (ablations).

Budget mapping. ``budget`` B (fraction of the prompt's T tokens attended per decode step) sets, unless
given directly:  rho = clamp(2B, 0.3, 1) (kept fraction after static eviction),
r1 = clamp(2B/rho, r1_min, 1) (level-1 clusters kept; r1_min: 0.25 in the lean preset, else 0.5), and the
level-2 count
k2 = floor((ceil(B*T) - tail) / s2), where tail (< s1) is the newest tokens not yet in a full
level-1 cluster (always attended). So a step attends k2*s2 + tail <= ceil(B*T) tokens, i.e. about
r2 = B/rho of the kept level-2 clusters. B = 0.05 -> rho 0.3, r1 0.5, r2 ~0.17; B = 0.1 -> 0.3,
0.67, ~0.33; B = 0.2 -> 0.4, 1.0, 0.5; B = 1 -> everything (reproduces the full cache exactly).
Setting ``r2`` directly uses k2 = floor(r2 * C2) instead (DESIGN's definition; C2 = full level-2
clusters), which can exceed the budget by the tail.

Always kept: the first and the last full cluster at both levels (sink and recency) and the tail.

Accuracy options (each keeps the original behaviour as one of its values, see mpcache_scoring.py):
``static_heads`` (mean | kv: per-KV-head static eviction, max over the group), ``window_free`` (the
static window kept besides rho*T), ``static_unit`` (runs of tokens kept whole), ``score`` (linear
| signed: sign-aware alpha mix, Quest's bound at alpha=1), ``group`` (sum | max | maxnorm over a GQA
group's query heads), ``score2`` (summary | max: a level-2 cluster scored by the max of q.k over its
tokens, no exp), ``force_last`` (False: only the sink cluster is forced), ``recent`` (a fraction of
the budget always spent on the newest tokens, which join the tail: a public slice, in the budget).
Presets (``preset``, see PRESETS) set static, hierarchy, share, score2, group, recent and s2 unless given:
``half`` (the default: ``lean`` inside half of the parents), ``retrieval`` (token-max clusters over
the whole cache), ``lean`` (retrieval's scoring only inside the parents the group-summed query's best
tokens pick: cheaper under 2PC; see docs/results/mpc_tradeoff.md), ``paper`` (the design above).
Under MPC the counts (k1, k2, rho*T) are public, the scores and selections secret (Backend ops only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from mpcache.core.backend import Backend, Tensor
from mpcache.core.cache import LayerCache
from mpcache.core.errors import UserError
from mpcache.core.policy import Policy, PromptInfo
from mpcache.core.selected import Outer
from mpcache.policies.clusters import ClusterBounds, ends_mask, gather_clusters, max_and_min, top
from mpcache.policies.mpcache_scoring import (
    OPTION_VALUES,
    cluster_scores,
    parent_token_max_scores,
    shared_token_max,
    static_importance,
    summaries,
    token_max_scores,
)
from mpcache.policies.static import StaticChoice, choose, evict


@dataclass
class Summaries:
    """Cluster summaries, each computed once when its cluster fills: c~ = alpha*max + (1-alpha)*min
    (score = linear), or base = min + (1-alpha)*range and range (score = signed)."""

    s1: int
    s2: int
    alpha: float
    score: str = "linear"
    bounds2: ClusterBounds = field(init=False)
    c2: Tensor | None = None  # [Hkv, C2, d]
    c1: Tensor | None = None  # [Hkv, C1, d]
    r2: Tensor | None = None  # ranges (signed score only)
    r1: Tensor | None = None
    count1: int = 0
    computed1: int = 0

    def __post_init__(self) -> None:
        self.bounds2 = ClusterBounds(self.s2)

    @property
    def computed2(self) -> int:
        return self.bounds2.computed

    def update(self, keys: Tensor, backend: Backend) -> int:
        """Summarise newly filled clusters of ``keys``; returns the number of full level-1 clusters."""
        b2 = self.bounds2
        before = b2.count
        after = b2.update(keys, backend)
        if after > before:
            c, r = summaries(b2.kmax[:, before:after], b2.kmin[:, before:after], self.alpha, self.score)
            self.c2, self.r2 = _append(self.c2, c, backend), _append(self.r2, r, backend)
        m = self.s1 // self.s2
        full1 = keys.shape[1] // self.s1
        if full1 > self.count1:
            h, _, d = keys.shape
            lo, hi = self.count1 * m, full1 * m
            kmax, _ = max_and_min(b2.kmax[:, lo:hi].reshape(h, full1 - self.count1, m, d), 2, backend)
            _, kmin = max_and_min(b2.kmin[:, lo:hi].reshape(h, full1 - self.count1, m, d), 2, backend)
            c, r = summaries(kmax, kmin, self.alpha, self.score)
            self.c1, self.r1 = _append(self.c1, c, backend), _append(self.r1, r, backend)
            self.computed1 += full1 - self.count1
            self.count1 = full1
        return self.count1

    def nbytes(self) -> int:
        extra = sum(t.numel() * t.element_size() for t in (self.c1, self.c2, self.r1, self.r2)
                    if hasattr(t, "element_size"))
        return self.bounds2.nbytes() + extra


def _append(old: Tensor | None, fresh: Tensor | None, backend: Backend) -> Tensor | None:
    """Summaries grow by the clusters that filled. They are fixed operands (``Backend.fix``: under
    MPC masked once, when made), so a step's q.c~ opens q only; a grown one reuses the old mask."""
    if fresh is None or old is None:
        return fresh if fresh is None else backend.fix(fresh)
    return backend.cat([old, fresh], dim=1)


@dataclass
class Selection:
    """One decode step's dynamic choice (kept for the follower layer of a shared pair)."""

    appended: int  # cache.appended when made: a follower only reuses the same step's choice
    selection: Tensor  # the chosen clusters (level 1 and 2 composed into one selection)
    count: int  # full clusters it chooses among
    size: int  # their size in tokens (s1: level 1 alone, s2: level 2)
    picked: int  # clusters chosen
    scores: Tensor | None = None  # share_scores: attention's q.K^T of this layer, reused by attention
    shift: Tensor | None = None  # ... and each head's max of them over the candidates (softmax shift)
    outer: Outer | None = None  # nested: ``selection`` picks among the children of outer's parents


# Option groups. paper: the original design (DESIGN §4: static eviction, two-level summaries, sharing).
# retrieval: no static stage, no level 1, no sharing; every level-2 cluster
# scored by its best token's q.k, GQA heads combined by maxnorm (what finds the needle on SmolLM2),
# clusters of 4 tokens (s2=16 misses the perplexity bar: +8.1 % at 10 %, s2=4 +2.6 %; README).
# lean: retrieval's scoring inside a quarter (at 10 %) of the 32-token parents, chosen by the best
# token of the group-summed query (one score per KV head, not g; no summaries): the per-head token
# work under 2PC covers a quarter of the cache. Parents by their summaries (score1=summary) lost the
# needle on SmolLM2 (0.6 at r1 = 0.5), by Quest's bound (score=signed, alpha=1) too (0/5).
# half (the default): lean inside half of the parents (the needle at 10 %: see docs/results/mpc_tradeoff.md).
PRESETS: dict[str, dict] = {
    "half": dict(static=False, hierarchy=True, share=False, score2="max", group="maxnorm", recent=0.0,
                 s2=8, parents=0, r1_min=0.5, score1="qsum"),
    "lean": dict(static=False, hierarchy=True, share=False, score2="max", group="maxnorm", recent=0.0,
                 s2=8, parents=0, r1_min=0.25, score1="qsum"),
    "retrieval": dict(static=False, hierarchy=False, share=False, score2="max", group="maxnorm", recent=0.0,
                      s2=4, parents=16, r1_min=0.5, score1="summary"),
    "paper": dict(static=True, hierarchy=True, share=True, score2="summary", group="sum", recent=0.0, s2=16,
                  parents=0, r1_min=0.5, score1="summary"),
}


@dataclass(frozen=True)
class MPCachePolicy(Policy):
    rho: float | None = None  # kept fraction after static eviction (None: from budget)
    r1: float | None = None  # level-1 clusters kept (None: from budget)
    r1_min: float | None = None  # ... at least this fraction (None: the preset's)
    r2: float | None = None  # level-2 clusters kept, of all of them (None: budget-exact count)
    window: float = 0.2  # static window, fraction of the prompt
    long_window: float = 0.1  # ... beyond long_prompt tokens
    long_prompt: int = 24000
    importance: str = "max"  # max | sum over the window rows
    s1: int = 32
    s2: int | None = None  # level-2 cluster size in tokens (None: the preset's)
    alpha: float = 0.6
    preset: str = "half"  # sets the options below left at None (see PRESETS)
    static: bool | None = None  # look-once static eviction after prefill
    dynamic: bool = True
    hierarchy: bool | None = None  # level-1 stage (off: pick level-2 clusters directly)
    share: bool | None = None  # cross-layer sharing of selections
    share_skip: int = 2  # layers at each end that always select on their own
    force_ends: bool = True  # always keep the first and last full cluster
    force_last: bool = True  # with force_ends: False keeps only the first (the tail holds the newest)
    # Accuracy options (issue 15; the defaults above/below marked "old" reproduce the original):
    static_heads: str = "mean"  # mean: one kept set per layer (old) | kv: per KV head, max over its group
    window_free: bool = False  # True: the static window is kept on top of rho*T top tokens (old: inside)
    static_unit: int = 1  # the static stage keeps runs of this many tokens, each by its best token (old: 1)
    static_spread: int = 0  # ... a run scored by the best of it and this many neighbours on each side
    score: str = "linear"  # linear: q.c~ (old) | signed: sign-aware alpha mix (alpha=1: Quest's bound)
    group: str | None = None  # GQA group's query heads combined by: sum (old) | max | maxnorm (see scoring)
    score2: str | None = None  # level 2 scored by: summary (old) | max: max over the cluster's tokens of q.k
    recent: float | None = None  # fraction of the budget always spent on the newest tokens (old: 0)
    # Without level 1: the top k2 level-2 clusters found in two smaller top-k's through parents of this
    # many tokens (the same selection up to ties, far fewer comparisons under 2PC); 0: one top-k (old).
    parents: int | None = None
    # score2=max: score children from attention's own q.K^T (computed once, reused by attention) and
    # with maxnorm hand attention its softmax shift (the head maxima); False: the old separate product.
    share_scores: bool = True
    # Level 1 parents scored by: summary (q.c~, the design) | qsum: the max over the parent's tokens of
    # the group-summed query's q.k (exact token scores, one per KV head instead of g: no summaries).
    score1: str | None = None

    name = "mpcache"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise UserError(f"mpcache: preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        explicit_parents = self.parents is not None
        for key, value in PRESETS[self.preset].items():  # options given explicitly win over the preset
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)  # the spec is frozen once parsed
        if self.s2 < 1 or self.s1 % self.s2:
            raise UserError(f"mpcache: s1 ({self.s1}) must be a multiple of s2 ({self.s2})")
        if self.parents and (self.parents % self.s2 or self.s1 % self.parents or self.parents == self.s2):
            if explicit_parents:
                raise UserError(f"mpcache: parents ({self.parents}) must be a multiple of s2 ({self.s2}) "
                                f"above it and divide s1 ({self.s1}), or 0")
            object.__setattr__(self, "parents", 0)  # the preset's parents do not fit s1/s2: one top-k
        for key, allowed in OPTION_VALUES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise UserError(f"mpcache: {key} must be one of {', '.join(allowed)}, got {value!r}")
        if self.static_unit < 1 or self.static_spread < 0 or not 0.0 <= self.recent < 1.0:
            raise UserError(f"mpcache: static_unit must be >= 1, static_spread >= 0 and recent in [0, 1), "
                            f"got {self.static_unit}, {self.static_spread}, {self.recent}")
        for key in ("rho", "r1", "r2", "window", "alpha"):
            value = getattr(self, key)
            if value is not None and not 0.0 < value <= 1.0 and not (key == "alpha" and value == 0):
                raise UserError(f"mpcache: {key} must be in (0, 1], got {value}")

    # --- configuration ----------------------------------------------------------------------------
    def kept_fraction(self) -> float:
        if not self.static:
            return 1.0
        if self.rho is not None:
            return self.rho
        return min(1.0, max(0.3, 2.0 * self.budget))

    def level1_fraction(self) -> float:
        if self.r1 is not None:
            return self.r1
        return min(1.0, max(self.r1_min, 2.0 * self.budget / self.kept_fraction()))

    def role(self, layer: int, num_layers: int) -> str:
        """alone | leader | follower, by DESIGN's pattern: ends alone, then pairs (2,3), (4,5)..."""
        lo, hi = self.share_skip, num_layers - self.share_skip
        if not self.share or layer < lo or layer >= hi:
            return "alone"
        first = lo + 2 * ((layer - lo) // 2)
        if first + 1 >= hi:
            return "alone"
        return "leader" if layer == first else "follower"

    # --- hooks ------------------------------------------------------------------------------------
    def _static_sizes(self, t: int) -> tuple[int, int]:
        """(window, keep) of the static stage for a prompt of t tokens (public)."""
        window = math.ceil((self.long_window if t > self.long_prompt else self.window) * t)
        keep = min(t, math.ceil(self.kept_fraction() * t - 1e-9) + (window if self.window_free else 0))
        return min(window, keep), keep

    def prompt_rows(self, prompt_len: int) -> int:
        window, keep = self._static_sizes(prompt_len)
        return window if keep < prompt_len and keep > window else 0

    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        t = cache.length
        role = self.role(layer, prompt.num_layers)
        cache.state.update(role=role, n_budget=self.budget_tokens(t), leader=layer - (role == "follower"))
        window, keep = self._static_sizes(t)
        if role == "follower":
            choice = cache.sequence["static"][layer - 1]
        elif keep >= t:
            choice = None
        elif keep == window:
            choice = StaticChoice(t - window, None)  # keep exactly the window
        else:
            # Importance from the window rows prefill computed anyway (no second softmax).
            probs = prompt.window_probs(window, cache.k, backend)  # [Hkv, g, W, T]
            score = static_importance(probs, t - window, self.static_heads, self.importance, backend)
            # [1 or Hkv, ...]: per layer or per KV head; runs of static_unit tokens
            choice = choose(score, keep - window, backend, self.static_unit, self.static_spread)
        cache.sequence.setdefault("static", {})[layer] = choice  # the follower layer reads it
        if choice is not None:
            evict(cache, choice, backend)
        if role != "follower" and self.dynamic and self._uses_summaries():
            cache.state["summaries"] = Summaries(self.s1, self.s2, self.alpha, self.score)
            cache.state["summaries"].update(cache.k, backend)

    def _uses_summaries(self) -> bool:
        """Only level 1 and summary-scored level 2 read cluster summaries (score2=max without the
        hierarchy reads the keys themselves: no min/max comparisons to build or store)."""
        return (self.hierarchy and self.score1 == "summary") or self.score2 == "summary"

    def decode_kv(self, layer: int, q: Tensor, cache: LayerCache, backend: Backend) -> tuple[Tensor, Tensor]:
        if not self.dynamic:
            return cache.k, cache.v
        if cache.state["role"] == "follower":
            choice = cache.sequence["dynamic"][cache.state["leader"]]
            if choice is not None and choice.appended != cache.appended:
                raise RuntimeError("mpcache: follower layer ran before its leader in this step")
        else:
            choice = self._select(q, cache, backend)
            cache.sequence.setdefault("dynamic", {})[layer] = choice
        return self._apply(choice, cache, backend, own=cache.state["role"] != "follower")

    def extra_nbytes(self, cache: LayerCache) -> int:
        summaries = cache.state.get("summaries")
        return summaries.nbytes() if summaries is not None else 0

    # --- dynamic selection ------------------------------------------------------------------------
    def _select(self, q: Tensor, cache: LayerCache, backend: Backend) -> Selection | None:
        summaries: Summaries | None = cache.state.get("summaries")
        n, n_budget = cache.length, cache.state["n_budget"]
        full1 = summaries.update(cache.k, backend) if summaries is not None else n // self.s1
        if self.recent:  # the newest floor(recent * budget) tokens join the tail (a public slice)
            full1 = min(full1, max(0, n - math.floor(self.recent * n_budget)) // self.s1)
        if full1 == 0 or n <= n_budget:
            return None
        m = self.s1 // self.s2
        hkv, _, d = cache.k.shape
        tail = n - full1 * self.s1
        qg = q.reshape(hkv, q.shape[0] // hkv, d)  # [Hkv, g, d] (GQA)
        sel1, k1 = None, full1
        if self.hierarchy:
            k1 = min(full1, max(self._ends(full1), math.ceil(self.level1_fraction() * full1 - 1e-9)))
            if k1 < full1 and self.score1 == "qsum":  # the best token of the group-summed query
                t = backend.matmul_t(backend.sum(qg, 1, keepdim=True), cache.k[:, : full1 * self.s1])
                s1 = backend.amax(t.reshape(hkv, full1, self.s1), 2)
                sel1 = top(backend, s1, k1, self._forced(full1, hkv))
            elif k1 < full1:
                r1 = None if summaries.r1 is None else summaries.r1[:, :full1]
                s1 = self._scores(qg, summaries.c1[:, :full1], r1, backend)
                sel1 = top(backend, s1, k1, self._forced(full1, hkv))
        # Level 2: score the children of sel1 (kept in position order, so the first and last child stay
        # at the ends), take the top k2. summary: every full child in one matmul, then gather; max: the
        # max of q.k over each child's tokens, computed inside the kept level-1 clusters only.
        shift = logits = chosen = None
        if self.score2 == "max" and self.share_scores and self.group != "qsum":
            logits = backend.matmul_t(qg * (d**-0.5), cache.k)  # attention's scores [Hkv, g, n]
            # a shift only when k2 has room for every head's best child besides the forced ends
            room = self._k2(full1, n_budget, tail, k1 * m) >= qg.shape[1] + self._ends(k1 * m)
            want = self.group == "maxnorm" and room
            s2, shift, chosen = shared_token_max(logits, full1 * self.s1, sel1, k1, self.s1, self.s2,
                                                 self.group, backend, want)
        elif self.score2 == "max" and sel1 is not None:
            s2 = parent_token_max_scores(qg, cache.k[:, : full1 * self.s1], sel1, k1, self.s1, self.s2,
                                         self.group, backend)
        elif self.score2 == "max":
            s2 = token_max_scores(qg, cache.k[:, : full1 * self.s1], self.s2, self.group, backend)
        else:
            r2 = None if summaries.r2 is None else summaries.r2[:, : full1 * m]
            s2 = self._scores(qg, summaries.c2[:, : full1 * m], r2, backend)
            if sel1 is not None:
                s2 = backend.gather(sel1, s2.reshape(hkv, full1, m)).reshape(hkv, k1 * m)
        k2 = self._k2(full1, n_budget, tail, k1 * m)
        if k2 >= k1 * m:  # every child of the level-1 picks: gather whole level-1 clusters
            return None if sel1 is None else Selection(cache.appended, sel1, full1, self.s1, k1, logits,
                                                       shift)
        if sel1 is None and self.parents:
            sel2, outer = self._top_by_parents(s2, k2, backend)
        else:  # among the children of the level-1 picks (applied level by level, never composed)
            sel2 = top(backend, s2, k2, self._forced(k1 * m, hkv))
            outer = None if sel1 is None else Outer(sel1, k1, self.s1, chosen)
        return Selection(cache.appended, sel2, full1 * m, self.s2, k2, logits, shift, outer)

    def _k2(self, full1: int, n_budget: int, tail: int, children: int) -> int:
        """Level-2 clusters picked (public): budget-exact, or r2 of all of them; at least the forced
        ends of the ``children`` candidates (first and last of k1*m children, not of the full1
        parents: one full level-1 cluster still has two level-2 ends)."""
        k2 = math.floor(self.r2 * full1 * (self.s1 // self.s2) + 1e-9) if self.r2 is not None else (
            (n_budget - tail) // self.s2)
        return min(children, max(k2, self._ends(children), 1))

    def _ends(self, count: int) -> int:
        return min(count, self.force_ends + (self.force_ends and self.force_last))

    def _top_by_parents(self, s2: Tensor, k2: int, backend: Backend) -> tuple[Tensor, Outer | None]:
        """The top k2 of the level-2 scores s2 [Hkv, C] (forced ends included) in two smaller top-k's,
        the second among the picked parents' children (returned with the parents as its Outer). A
        parent (``parents`` tokens, p = parents/s2 children) scores its best child. Every child in
        the top k2 lies in one of the top k2 parents: a non-forced parent holding one scores at least
        the k2-th child score, and each such parent's best child is a distinct child scoring that
        high (the forced children lie in the forced first/last parent, which are counted alike). So
        the top k2 among the children of the top k2 parents is the one-shot selection, up to ties.
        Under 2PC the all-pairs comparisons fall from C^2/2 to (C/p)^2/2 + (k2*p)^2/2 (C = 512,
        k2 = 49 at n = 2048, 10 %: 131k -> 27k per KV head)."""
        hkv, count = s2.shape
        p = self.parents // self.s2
        kp = min(count // p, k2)
        if kp * p >= count:  # the parents would keep every child: one top-k
            return top(backend, s2, k2, self._forced(count, hkv)), None
        children = s2.reshape(hkv, count // p, p)
        sel_p = top(backend, backend.amax(children, 2), kp, self._forced(count // p, hkv))
        cand = backend.gather(sel_p, children).reshape(hkv, kp * p)  # position order kept: ends stay ends
        return top(backend, cand, k2, self._forced(kp * p, hkv)), Outer(sel_p, kp, self.parents)

    def _forced(self, count: int, heads: int):
        last = self.force_ends and self.force_last
        return ends_mask(count, self.force_ends, last, heads) if self.force_ends else None

    def _scores(self, qg: Tensor, base: Tensor, rng: Tensor | None, backend: Backend) -> Tensor:
        return cluster_scores(qg, base, rng, self.alpha, self.group, backend)

    def _apply(self, choice: Selection | None, cache: LayerCache, backend: Backend, own: bool = True
               ) -> tuple[Tensor, Tensor]:
        """Gather the chosen clusters' tokens (one gather of the cluster-major cache) plus the tail;
        the keys carry this layer's scores and shift (``own``: not a follower's borrowed choice)."""
        if (c := choice) is None:
            return cache.k, cache.v
        scores, shift = (c.scores, c.shift) if own else (None, None)  # a follower: not the leader's scores
        outer = c.outer if own or c.outer is None else replace(c.outer, chosen=None)
        k = gather_clusters(backend, c.selection, cache.k, c.count, c.size, c.picked, scores, shift, outer)
        return k, gather_clusters(backend, c.selection, cache.v, c.count, c.size, c.picked, outer=outer)
