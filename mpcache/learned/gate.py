"""Attention-Gate (arXiv 2410.12876), our reconstruction: a light gate per layer emits one keep
logit per token and KV head, trained by distillation from the full-cache model.

No public code exists; the abstract says: a gate before each attention layer, a reduced
multi-head attention over the context plus a gating function, eviction flags per token/head/layer,
an eviction loss towards a target rate, straight-through flags. Our choices (SEED-POLICIES.md 3,
[I]): the gate reads the token's pre-RoPE [q; k; v] (a linear image of the layer's normed hidden
state, so the policy needs no model change); 2 heads of 32 with causal attention over ALL tokens
(the gate keeps its own K'/V' for every token); logits = W_o [attn; x] + b, b = +3 (start "keep").
Training: the frozen model with gated attention, A_ij ~ m_ij exp(s_ij), m_ij = causal and
(f_j or i - j < window or j < sinks), flags f = 1[g > 0] forward and d sigmoid(g) backward (STE);
loss = KL(p_full || p_gated) + lam * (r* - mean(1 - sigmoid(g)))^2.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from mpcache.learned import features
from mpcache.models.transformer import rope_tables

if TYPE_CHECKING:
    from mpcache.models.config import ModelConfig

class Gates(torch.nn.Module):
    def __init__(self, config: ModelConfig, heads: int = 2, dim: int = 32, seed: int = 0, bias: float = 3.0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        n_in, layers, self.heads, self.dim = features.input_size(config), config.num_layers, heads, dim

        def init(*shape):
            return torch.nn.Parameter(torch.randn(*shape, generator=gen) / math.sqrt(shape[-1]))

        self.wqkv = init(layers, 3 * heads * dim, n_in)
        self.wo = torch.nn.Parameter(torch.zeros(layers, config.num_kv_heads, heads * dim + n_in))
        self.bias = torch.nn.Parameter(torch.full((layers, config.num_kv_heads), bias))

    def project(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, in] -> q', k', v' each [heads, T, dim]."""
        qkv = (x @ self.wqkv[layer].T).view(x.shape[0], 3, self.heads, self.dim).permute(1, 2, 0, 3)
        return qkv[0], qkv[1], qkv[2]

    def logits(self, layer: int, x: torch.Tensor, q: torch.Tensor, ctx_k: torch.Tensor, ctx_v: torch.Tensor,
               offset: int) -> torch.Tensor:
        """Gate logits [T, Hkv] for tokens at positions offset.. whose queries q attend causally over
        the gate context ctx_k/ctx_v [heads, n, dim] (positions 0..n-1)."""
        t, n = q.shape[1], ctx_k.shape[1]
        mask = (torch.arange(t)[:, None] + offset) >= torch.arange(n)[None, :]
        scores = (q @ ctx_k.transpose(1, 2) / math.sqrt(self.dim)).masked_fill(~mask, float("-inf"))
        attn = (torch.softmax(scores, -1) @ ctx_v).transpose(0, 1).reshape(t, -1)
        return torch.cat([attn, x], 1) @ self.wo[layer].T + self.bias[layer]

    def prompt_logits(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [T, Hkv], k', v') for a whole prompt."""
        q, k, v = self.project(layer, x)
        return self.logits(layer, x, q, k, v, 0), k, v


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def gated_forward(weights: dict[str, torch.Tensor], config: ModelConfig, ids: list[int], gates: Gates | None,
                  sinks: int = 4, window: int = 8) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Differentiable full-sequence forward of the frozen model with gated attention.

    Returns (logits [T, vocab], keep probabilities sigmoid(g) [L, T, Hkv] or None without gates).
    ``gates=None`` is the plain full-cache model (the teacher)."""
    cfg, t, d = config, len(ids), config.head_dim
    hkv, g = cfg.num_kv_heads, cfg.group_size
    cos, sin = rope_tables(cfg, torch.arange(t))
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    causal = (j <= i).float()
    forced = causal * ((i - j < window) | (j < sinks)).float()  # [T, T]
    rows = torch.arange(t).repeat(g)

    def rope(x):
        half = d // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    x = weights["model.embed_tokens.weight"][ids]
    keep_probs = []
    for layer in range(cfg.num_layers):
        p = f"model.layers.{layer}."
        h = rms_norm(x, weights[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        q = (h @ weights[p + "self_attn.q_proj.weight"].T).view(t, cfg.num_heads, d).transpose(0, 1)
        k = (h @ weights[p + "self_attn.k_proj.weight"].T).view(t, hkv, d).transpose(0, 1)
        v = (h @ weights[p + "self_attn.v_proj.weight"].T).view(t, hkv, d).transpose(0, 1)
        if gates is None:
            m = causal.expand(hkv, t, t)
        else:
            feats = torch.cat([y.transpose(0, 1).reshape(t, -1) for y in (q, k, v)], 1)
            logit = gates.prompt_logits(layer, feats)[0]  # [T, Hkv]
            soft = torch.sigmoid(logit)
            flag = (logit > 0).float() + soft - soft.detach()  # straight-through
            keep_probs.append(soft)
            m = forced + (causal - forced) * flag.T[:, None, :]  # [Hkv, T, T]
        m = m.repeat(1, g, 1) if m.shape[1] == t else m
        scores = (rope(q) / math.sqrt(d)).reshape(hkv, g * t, d) @ rope(k).transpose(1, 2)
        scores = scores.masked_fill(rows[None, :, None] < torch.arange(t)[None, None, :], float("-inf"))
        # max over all causal keys (evicted ones too): exp never overflows
        e = m * torch.exp(scores - scores.amax(-1, keepdim=True).detach())
        probs = e / e.sum(-1, keepdim=True)
        out = (probs @ v).reshape(cfg.num_heads, t, d).transpose(0, 1).reshape(t, -1)
        x = x + out @ weights[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, weights[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        gate = torch.nn.functional.silu(h @ weights[p + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ weights[p + "mlp.up_proj.weight"].T)) @ weights[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, weights["model.norm.weight"], cfg.rms_norm_eps)
    head = weights["model.embed_tokens.weight"] if cfg.tie_embeddings else weights["lm_head.weight"]
    return x @ head.T, (torch.stack(keep_probs) if keep_probs else None)
