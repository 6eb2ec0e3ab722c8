"""Importance rankings shared by the plaintext compression policies (MiKV, KVCrush).

Plain torch (these policies run in plaintext only). Each function returns the indices of the
tokens to keep, ascending, [H, n_keep] with H = the rows of the scores given (KV heads, or 1 for a
layer-wide choice).
"""

from __future__ import annotations

import torch

from mpcache.core.backend import Backend
from mpcache.core.errors import UserError
from mpcache.core.policy import PromptInfo

IMPORTANCE = ("h2o", "snapkv")


def check_importance(name: str) -> None:
    if name not in IMPORTANCE:
        raise UserError(f"importance must be one of {', '.join(IMPORTANCE)}, got {name!r}")


def recent_plus_top(scores: torch.Tensor, n_keep: int, recent: int) -> torch.Tensor:
    """The ``recent`` newest tokens plus the highest-scoring older ones, ``n_keep`` in all."""
    t = scores.shape[-1]
    n_keep, recent = min(n_keep, t), min(recent, n_keep, t)
    old = t - recent
    top = torch.topk(scores[:, :old], n_keep - recent, dim=-1).indices
    newest = torch.arange(old, t).expand(scores.shape[0], -1)
    return torch.cat([top, newest], -1).sort(-1).values


def head_window_scores(prompt: PromptInfo, keys: torch.Tensor, window: int, backend: Backend) -> torch.Tensor:
    """Attention each token receives from the last ``window`` prompt queries, per QUERY head [Hq, T]."""
    t = keys.shape[1]
    window = max(1, min(window, t))
    probs = prompt.window_probs(window, keys, backend)  # [Hkv, g, W, T]
    return probs.sum(2).flatten(0, 1)


def pooled(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """SnapKV's smoothing: average pool over tokens (same length)."""
    if kernel <= 1:
        return scores
    x = torch.nn.functional.avg_pool1d(scores[:, None], kernel, 1, kernel // 2, count_include_pad=True)
    return x[:, 0, : scores.shape[-1]]


def importance_keep(
    kind: str, prompt: PromptInfo, keys: torch.Tensor, n_keep: int, backend: Backend, *, per_head: bool,
    recent_ratio: float = 0.5, window: int = 32, kernel: int = 7,
) -> torch.Tensor:
    """Indices [Hkv or 1, n_keep] kept by H2O (accumulated attention + recent tokens) or SnapKV
    (window votes, pooled, + the window itself)."""
    hkv = keys.shape[0]
    if kind == "h2o":
        scores = prompt.attn_colsum.float()  # [Hkv, T]
        recent = max(1, round(recent_ratio * n_keep))
    else:
        t = keys.shape[1]
        recent = max(1, min(window, n_keep - 1, t - 1))
        votes = head_window_scores(prompt, keys, recent, backend).view(hkv, -1, t).sum(1)
        scores = pooled(votes, kernel)
    if not per_head:
        scores = scores.sum(0, keepdim=True)
    return recent_plus_top(scores, n_keep, recent)


def complement(keep: torch.Tensor, t: int) -> torch.Tensor:
    """Ascending indices [H, t - n_keep] not in ``keep`` [H, n_keep]."""
    mask = torch.zeros(keep.shape[0], t, dtype=torch.bool).scatter_(1, keep, True)
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, : t - keep.shape[1]]
