"""Locret's retaining heads (arXiv 2410.01805): per layer, a small MLP on the token's pre-RoPE
[q; k; v] -> one causal importance score (CIS) per KV head, trained with the backbone frozen.

Label (as the authors' data generation): for the "prompt" tokens k of a sequence,
S[h, k] = max over "answer" queries p and the query heads of KV head h's group of q_p.k_k / sqrt(d)
(pre-softmax logits, post-RoPE). Loss: SmoothL1(pred, S) + 0.0025 * MSE of adjacent predictions.
Scaled-down recipe for a shared CPU (SEED-POLICIES.md 2b, cut 10x): 48 steps, one 256-token
sequence each (prompt 192, answer 64) of a generic English corpus, AdamW 5e-4 (0.9, 0.95), 10%
warmup then linear decay, clip by value 0.5, fp32, hidden 128.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from mpcache.core.errors import UserError
from mpcache.learned import corpus, features, loop, store

if TYPE_CHECKING:
    from mpcache.models.config import ModelConfig

KIND = "locret"


class RetainingHeads(torch.nn.Module):
    """All layers' heads: fc1 [L, hidden, in], fc2 [L, Hkv, hidden], SiLU, no biases."""

    def __init__(self, layers: int, inputs: int, hidden: int, outputs: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc1 = torch.nn.Parameter(torch.randn(layers, hidden, inputs, generator=gen) / math.sqrt(inputs))
        self.fc2 = torch.nn.Parameter(torch.randn(layers, outputs, hidden, generator=gen) / math.sqrt(hidden))

    def forward(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x [T, in] -> CIS [T, Hkv]."""
        return torch.nn.functional.silu(x @ self.fc1[layer].T) @ self.fc2[layer].T

    @classmethod
    def for_model(cls, config: ModelConfig, hidden: int, seed: int = 0) -> RetainingHeads:
        return cls(config.num_layers, features.input_size(config), hidden, config.num_kv_heads, seed)


@dataclass
class LocretTrainConfig:
    seq_len: int = 256
    prompt_len: int = 192  # labels come from the queries after it
    steps: int = 48
    hidden: int = 128
    lr: float = 5e-4
    smooth: float = 0.0025
    val_sequences: int = 2
    seed: int = 0


def labels(q: torch.Tensor, k: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """S [prompt_len, Hkv]: max over answer queries and the group's query heads of the logits."""
    heads, t, d = q.shape
    hkv = k.shape[0]
    qa = q[:, prompt_len:].reshape(hkv, (heads // hkv) * (t - prompt_len), d)
    return (qa @ k[:, :prompt_len].transpose(1, 2) / math.sqrt(d)).amax(1).T


def loss_fn(pred: torch.Tensor, target: torch.Tensor, smooth: float) -> torch.Tensor:
    f = torch.nn.functional
    return f.smooth_l1_loss(pred, target) + smooth * f.mse_loss(pred[:-1], pred[1:])


def top_overlap(pred: torch.Tensor, target: torch.Tensor, frac: float = 0.1) -> float:
    """Mean over KV heads of |top-frac(pred) & top-frac(target)| / |top-frac| (chance = frac)."""
    k = max(1, round(frac * pred.shape[0]))
    hits = []
    for h in range(pred.shape[1]):
        a = set(pred[:, h].topk(k).indices.tolist())
        b = set(target[:, h].topk(k).indices.tolist())
        hits.append(len(a & b) / k)
    return sum(hits) / len(hits)


def _sequence_loss(model, heads: RetainingHeads, ids: list[int], cfg: LocretTrainConfig, grad: bool):
    feats = features.prefill_features(model, ids)
    total, overlaps = 0.0, []
    with torch.set_grad_enabled(grad):
        for layer, (x, q, k) in enumerate(feats):
            target = labels(q, k, cfg.prompt_len)
            pred = heads(layer, x[: cfg.prompt_len])
            total = total + loss_fn(pred, target, cfg.smooth)
            overlaps.append(top_overlap(pred.detach(), target))
    return total / len(feats), sum(overlaps) / len(overlaps)


def evaluate(model, heads: RetainingHeads, val: list[list[int]], cfg: LocretTrainConfig) -> dict:
    losses, overlaps = zip(*(_sequence_loss(model, heads, ids, cfg, False) for ids in val), strict=True)
    return {"loss": round(float(sum(losses)) / len(losses), 5),
            "top10_overlap": round(sum(overlaps) / len(overlaps), 4)}


def train_heads(model, tokenizer, tag: str, cfg: LocretTrainConfig, progress: bool = True) -> dict:
    """Train, save to the store, return the metadata. ``model``: a plaintext Transformer (frozen)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    path = store.weights_path(KIND, tag, cfg.seed)
    train_seqs = corpus.sequences(tokenizer, cfg.seq_len, "train", cfg.seed)
    val = corpus.sequences(tokenizer, cfg.seq_len, "val", cfg.seed, cfg.val_sequences)
    if not train_seqs or not val:
        raise UserError(f"locret: the corpus has no {cfg.seq_len}-token sequences")
    heads = RetainingHeads.for_model(model.config, cfg.hidden, cfg.seed)
    meta = {"kind": KIND, "model": tag, "config": asdict(cfg), "corpus": "pydoc_data.topics (Python stdlib)"}
    t0 = time.perf_counter()
    before = evaluate(model, heads, val, cfg)
    def step(i: int) -> torch.Tensor:
        return _sequence_loss(model, heads, train_seqs[i % len(train_seqs)], cfg, True)[0]

    result = loop.train(KIND, path, heads, loop.LoopConfig(cfg.steps, cfg.lr), step, meta, progress)
    after = evaluate(model, heads, val, cfg)
    meta = {**meta, **result, "val_before": before, "val_after": after,
            "params": sum(p.numel() for p in heads.parameters()),
            "wall_seconds_incl_eval": round(time.perf_counter() - t0, 1)}
    loop.finish(path, heads, meta)
    return meta


def load_heads(path, config: ModelConfig) -> tuple[RetainingHeads, dict]:
    saved = store.load(path, KIND)
    heads = RetainingHeads.for_model(config, saved["meta"]["config"]["hidden"])
    heads.load_state_dict(saved["state"])
    heads.requires_grad_(False)
    return heads, saved["meta"]
