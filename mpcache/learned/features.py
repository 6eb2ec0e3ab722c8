"""Per-token inputs of the trained scorers: the token's own PRE-RoPE q, k, v of one layer.

The cache stores keys after RoPE and the policies see queries after RoPE; RoPE is a rotation with
public angles, so the pre-RoPE values are recovered exactly by rotating back (no model change).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mpcache.generation.prefill import prefill
from mpcache.models.transformer import rope_tables

if TYPE_CHECKING:
    from mpcache.models.config import ModelConfig

def unrope(x: torch.Tensor, positions: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Inverse of ``Backend.rope`` for x [H, T, d] at ``positions`` [T]."""
    cos, sin = rope_tables(config, positions)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos - rotated * sin


def token_features(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                   config: ModelConfig) -> torch.Tensor:
    """[T, (H + 2 Hkv) d] from post-RoPE q [H, T, d], k [Hkv, T, d] and v [Hkv, T, d]."""
    parts = [unrope(q, positions, config), unrope(k, positions, config), v]
    return torch.cat([p.transpose(0, 1).reshape(p.shape[1], -1) for p in parts], dim=1).float()


def input_size(config: ModelConfig) -> int:
    return (config.num_heads + 2 * config.num_kv_heads) * config.head_dim


@torch.no_grad()
def prefill_features(model, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Full-cache prefill of ``ids``; per layer (features [T, in], q post-RoPE [H, T, d], k post-RoPE)."""
    pre = prefill(model, ids)
    pos = torch.arange(len(ids))
    out = []
    for prompt, lc in zip(pre.prompts, pre.cache.layers, strict=True):
        out.append((token_features(prompt.q, lc.k, lc.v, pos, model.config), prompt.q, lc.k))
    return out
