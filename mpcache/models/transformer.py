"""One LLaMA-family transformer written once over a Backend (RMSNorm, RoPE, GQA, SiLU MLP).

Batch size is 1; activations are [tokens, hidden]. Attention groups the query heads of each KV head
into one matrix ([Hkv, group*T, d]) so GQA needs neither repeat nor broadcasting (CrypTen has
neither for matmul).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mpcache.core.backend import Backend, Tensor
from mpcache.core.cache import KVCache, LayerCache
from mpcache.core.policy import Policy, PromptInfo
from mpcache.core.selected import SelectedRows
from mpcache.core.selected import attend as attend_selected
from mpcache.models.causal import causal_attention
from mpcache.models.config import ModelConfig


def rope_tables(config: ModelConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Public cos/sin tables [T, head_dim] for the given positions (HF's default RoPE)."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos().float(), emb.sin().float()


class Transformer:
    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, torch.Tensor],
        backend: Backend,
        policy: Policy | None = None,
    ):
        self.config = config
        self.backend = backend
        self.policy = policy or Policy()
        # Progress of a long forward pass: called with (layers done, tokens fed) after each layer.
        self.on_layer: Callable[[int, int], None] | None = None
        w = {name: backend.weight(t, name) for name, t in weights.items()}
        self.embed_table = w["model.embed_tokens.weight"]
        self.lm_head = w["model.embed_tokens.weight"] if config.tie_embeddings else w["lm_head.weight"]
        self.final_norm = w["model.norm.weight"]
        self.layers = []
        for i in range(config.num_layers):
            p = f"model.layers.{i}."
            self.layers.append(
                {name: w[p + name + ".weight"] for name in (
                    "input_layernorm", "post_attention_layernorm", "self_attn.q_proj",
                    "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                )}
            )

    def new_cache(self, policy: Policy | None = None) -> KVCache:
        """An empty cache for one sequence, managed by ``policy`` (default: the model's)."""
        policy = policy or self.policy
        if policy is not None:
            policy.check_backend(self.backend.name)
        return KVCache.empty(self.config.num_layers, policy)

    def forward(self, token_ids, cache: KVCache, all_logits: bool = False,
                stage: bool | None = None) -> Tensor:
        """Feed ``token_ids`` (a list of ints; under MPC, what the embedding backend takes).

        Returns logits for the last token ([1, vocab]) or for every token (``all_logits``).
        The first call on an empty cache is the prefill; later calls decode.
        ``stage`` (a chat turn): the tokens go in as one chunk on top of the cache, attending to
        everything it holds; True then runs the policy's ``after_prefill`` over the whole cache with
        this chunk's queries as the prompt info, False leaves the policy alone (its state catches up
        lazily at the next decode step). None: a chunk after the prompt goes in token by token.
        """
        b, cfg = self.backend, self.config
        n = len(token_ids)
        start = cache.position
        if start + n > cfg.max_positions:
            raise ValueError(
                f"sequence of {start + n} tokens exceeds the model's {cfg.max_positions} positions"
            )
        prefill = start == 0 if stage is None else stage
        policy = cache.policy or self.policy
        if stage is None and not prefill and n > 1 and type(policy) is not Policy:
            # A chunk after the prompt (a chat turn): one token at a time, so the policy sees each.
            rows = [self.forward([t], cache) for t in token_ids]
            return self.backend.cat(rows, dim=0) if all_logits else rows[-1]
        cos, sin = rope_tables(cfg, torch.arange(start, start + n))
        x = b.embed(token_ids, self.embed_table)
        for i, layer in enumerate(self.layers):
            h = b.rms_norm(x, layer["input_layernorm"], cfg.rms_norm_eps)
            attn = self._attention(i, h, layer, cache.layers[i], cos, sin, prefill, policy)
            x = x + b.linear(attn, layer["self_attn.o_proj"])
            h = b.rms_norm(x, layer["post_attention_layernorm"], cfg.rms_norm_eps)
            gate = b.silu(b.linear(h, layer["mlp.gate_proj"]))
            x = x + b.linear(b.mul(gate, b.linear(h, layer["mlp.up_proj"])), layer["mlp.down_proj"])
            if self.on_layer is not None:
                self.on_layer(i + 1, n)
        if not all_logits:
            x = x[-1:]
        x = b.rms_norm(x, self.final_norm, cfg.rms_norm_eps)
        return b.linear(x, self.lm_head)

    def _attention(self, i: int, h: Tensor, layer: dict, lc: LayerCache, cos, sin, prefill: bool,
                   policy: Policy):
        b, cfg = self.backend, self.config
        n, d, g = h.shape[0], cfg.head_dim, cfg.group_size
        q = b.linear(h, layer["self_attn.q_proj"]).view(n, cfg.num_heads, d).transpose(0, 1)
        k = b.linear(h, layer["self_attn.k_proj"]).view(n, cfg.num_kv_heads, d).transpose(0, 1)
        v = b.linear(h, layer["self_attn.v_proj"]).view(n, cfg.num_kv_heads, d).transpose(0, 1)
        q, k = b.rope(q, cos, sin), b.rope(k, cos, sin)
        past = lc.length
        lc.append(k, v, b)
        if prefill or n > 1:
            # The chunk's causal attention over everything held (in row blocks when it is long), with
            # the window rows the policy's stage reads: kept, not recomputed.
            grouped = (q * (d**-0.5)).reshape(cfg.num_kv_heads, g * n, d)
            rows = min(n, policy.prompt_rows(lc.length)) if prefill else 0
            out, colsum, window = causal_attention(b, grouped, lc.k, lc.v, past, n, rows, prefill)
            if prefill:
                with b.phase("static-eviction"):
                    info = PromptInfo(q, colsum, cfg.num_layers, window, cfg)
                    policy.after_prefill(i, info, lc, b)
            return out.reshape(cfg.num_heads, n, d).transpose(0, 1).reshape(n, cfg.num_heads * d)
        with b.phase("selection"):
            fused = policy.decode_attention(i, q, lc, b)
        if fused is not None:  # the policy attends itself (e.g. a mixed-precision cache)
            out, attended = fused
            lc.attended += attended
            lc.decode_steps += 1
            return out.reshape(cfg.num_heads, n, d).transpose(0, 1).reshape(n, cfg.num_heads * d)
        with b.phase("selection"):
            keys, values = policy.decode_kv(i, q, lc, b)
        lc.attended += keys.shape[1]
        lc.decode_steps += 1
        grouped = (q * (d**-0.5)).reshape(cfg.num_kv_heads, g * n, d)
        if isinstance(keys, SelectedRows):  # attended through the cache's mask (mpcache.core.selected)
            probs, out = attend_selected(b, grouped, keys, values)
        else:
            probs = b.softmax(b.matmul_t(grouped, keys))
            out = b.matmul(probs, values)  # [Hkv, g*n, d]
        with b.phase("selection"):
            policy.observe(i, probs, lc, b)
        return out.reshape(cfg.num_heads, n, d).transpose(0, 1).reshape(n, cfg.num_heads * d)
