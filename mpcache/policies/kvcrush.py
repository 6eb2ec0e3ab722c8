"""KVCrush: an importance policy fills most of the budget, head-behaviour signatures pick the rest.

Look-once, after prefill, layer-wide (signatures span all heads, so the kept set is shared by the
heads of a layer). Budget B = ``budget_tokens(T)``:

1. the importance policy (H2O: accumulated attention + recent tokens; SnapKV: window votes + the
   window) keeps (1 - rho) * B tokens;
2. every other token (a candidate) gets an H-bit signature over the H query heads: bit h = 1 when
   its score in head h (attention from the last ``window`` prompt queries) is in the top half of
   that head's candidate scores (``kernels.dispatch.pack_signatures``);
3. distance = Hamming distance to an anchor signature (``alternate`` 0101..., the bitwise
   ``mean`` of the candidates, or ``random``) (``kernels.dispatch.hamming``);
4. candidates sorted by distance; rho * B representatives are taken evenly spaced along that order,
   so every behaviour group keeps a few tokens instead of being dropped wholesale.

``mode="page"`` groups candidates by pages of ``page_size`` positions (paged caches): a page's
score per head is the sum over its candidates, pages are picked the same way and their candidate
tokens kept until rho * B tokens are reached. Generated tokens are appended and always attended
(at most the number of new tokens beyond the budget). Plaintext only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.dispatch import hamming, pack_signatures
from kernels.signature_ref import num_words
from mpcache.core.backend import Backend
from mpcache.core.cache import LayerCache
from mpcache.core.errors import UserError
from mpcache.core.policy import Policy, PromptInfo
from mpcache.policies.importance import check_importance, complement, head_window_scores, importance_keep

ANCHORS = ("alternate", "mean", "random")
MODES = ("token", "page")


@dataclass(frozen=True)
class KVCrushConfig:
    rho: float = 0.25  # share of the budget chosen by signatures
    importance: str = "h2o"  # h2o | snapkv
    anchor: str = "alternate"  # alternate | mean | random
    mode: str = "token"  # token | page
    page_size: int = 16
    window: int = 32  # queries whose attention defines the per-head scores
    recent_ratio: float = 0.5  # H2O importance: share of its part kept for the newest tokens
    seed: int = 0  # random anchor

    def check(self) -> None:
        if not 0.0 <= self.rho <= 1.0:
            raise UserError(f"kvcrush rho must be in [0, 1], got {self.rho}")
        if self.anchor not in ANCHORS:
            raise UserError(f"kvcrush anchor must be one of {', '.join(ANCHORS)}, got {self.anchor!r}")
        if self.mode not in MODES:
            raise UserError(f"kvcrush mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.page_size < 1 or self.window < 1:
            raise UserError("kvcrush page_size and window must be at least 1")
        check_importance(self.importance)


def make_anchor(signatures: torch.Tensor, heads: int, kind: str, seed: int) -> torch.Tensor:
    """Anchor signature [W] int32 with no bit set beyond ``heads``."""
    bits = torch.arange(heads)
    if kind == "alternate":
        on = bits % 2 == 1
    elif kind == "mean":  # majority bit per head over the candidates
        words = signatures.to(torch.int64) & 0xFFFFFFFF
        per_head = (words[:, bits // 32] >> (bits % 32)) & 1
        on = per_head.float().mean(0) >= 0.5
    else:
        on = torch.rand(heads, generator=torch.Generator().manual_seed(seed)) < 0.5
    words = torch.zeros(num_words(heads), dtype=torch.int64)
    words.index_add_(0, bits // 32, on.to(torch.int64) << (bits % 32))
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def evenly_spaced(order: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` entries of ``order`` at evenly spaced ranks (centres of equal slices)."""
    n = order.shape[0]
    if count <= 0 or n == 0:
        return order[:0]
    ranks = ((torch.arange(count, dtype=torch.float64) + 0.5) * n / count).long().clamp(max=n - 1)
    return order[ranks]


def representatives(head_scores: torch.Tensor, candidates: torch.Tensor, count: int,
                    cfg: KVCrushConfig) -> torch.Tensor:
    """Pick ``count`` of the ``candidates`` (token positions) by signature; ascending positions."""
    if count <= 0 or candidates.numel() == 0:
        return candidates[:0]
    count = min(count, candidates.numel())
    scores = head_scores[:, candidates]  # [H, Nc]
    if cfg.mode == "page":
        pages, owner = torch.unique(candidates // cfg.page_size, return_inverse=True)
        unit_scores = torch.zeros(scores.shape[0], pages.numel()).index_add_(1, owner, scores)
    else:
        unit_scores, owner = scores, None
    thresholds = unit_scores.median(dim=-1).values
    sig = pack_signatures(unit_scores, thresholds)
    anchor = make_anchor(sig, unit_scores.shape[0], cfg.anchor, cfg.seed)
    order = torch.sort(hamming(sig, anchor).to(torch.int64), stable=True).indices
    if owner is None:
        return candidates[evenly_spaced(order, count)].sort().values
    # page mode: pages in evenly spaced order first, then the rest; fill with their candidates
    n_pages = max(1, min(order.numel(), round(count / cfg.page_size)))
    first = evenly_spaced(order, n_pages)
    rest = order[~torch.isin(order, first)]
    chosen: list[torch.Tensor] = []
    taken = 0
    for page in torch.cat([first, rest]).tolist():
        tokens = candidates[owner == page]
        chosen.append(tokens[: count - taken])
        taken += chosen[-1].numel()
        if taken >= count:
            break
    return torch.cat(chosen).sort().values


def kvcrush_keep(prompt: PromptInfo, keys: torch.Tensor, n_keep: int, cfg: KVCrushConfig,
                 backend: Backend) -> torch.Tensor:
    """Layer-wide ascending indices [1, n_keep] of the prompt tokens KVCrush keeps."""
    t = keys.shape[1]
    n_keep = min(n_keep, t)
    n_rep = int(cfg.rho * n_keep)
    n_imp = n_keep - n_rep
    if n_imp < 1:
        n_imp, n_rep = 1, n_keep - 1
    imp = importance_keep(cfg.importance, prompt, keys, n_imp, backend, per_head=False,
                          recent_ratio=cfg.recent_ratio, window=cfg.window)
    candidates = complement(imp, t)[0]
    head_scores = head_window_scores(prompt, keys, cfg.window, backend)  # [Hq, T]
    reps = representatives(head_scores, candidates, n_rep, cfg)
    return torch.cat([imp[0], reps]).sort().values[None]


@dataclass(frozen=True)
class KVCrushPolicy(KVCrushConfig, Policy):
    name = "kvcrush"
    backends = ("plain",)
    plaintext_only_because = "its representatives come from plaintext bit signatures"

    def __post_init__(self) -> None:
        self.check()

    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        t = cache.length
        n_keep = self.budget_tokens(t)
        if n_keep >= t:
            return
        keep = kvcrush_keep(prompt, cache.k, n_keep, self, backend)
        cache.k, cache.v = backend.gather(keep, cache.k), backend.gather(keep, cache.v)
