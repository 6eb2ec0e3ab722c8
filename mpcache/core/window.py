"""Attention of the prompt's last queries (the observation window) over the prompt keys.

Used by the look-once policies (SnapKV, MPCache static eviction) right after prefill.
"""

from __future__ import annotations

import torch

from mpcache.core.backend import Backend, Tensor


def window_attention(q: Tensor, keys: Tensor, window: int, backend: Backend) -> Tensor:
    """Causal softmax(Q_W K^T / sqrt(d)) of the last ``window`` prompt queries.

    ``q`` [H, T, d] (after RoPE), ``keys`` [Hkv, T, d]. Returns probabilities [Hkv, g, W, T] where g
    is the query heads per KV head.
    """
    heads, t, d = q.shape
    hkv = keys.shape[0]
    g = heads // hkv
    qw = (q[:, t - window :] * (d**-0.5)).reshape(hkv, g * window, d)
    rows = torch.arange(t - window, t).repeat(g)
    mask = rows[:, None] >= torch.arange(t)[None, :]  # public causal mask
    probs = backend.softmax(backend.matmul(qw, keys.transpose(1, 2)), mask)
    return probs.reshape(hkv, g, window, t)
