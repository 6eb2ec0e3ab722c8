"""Training the Attention-Gate reconstruction: distillation from the full-cache model (KL on the
next-token distributions) plus an eviction-rate term; gate parameters only, backbone frozen."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from mpcache.core.errors import UserError
from mpcache.learned import corpus, loop, store
from mpcache.learned.gate import Gates, gated_forward

KIND = "attention-gate"


@dataclass
class GateTrainConfig:
    seq_len: int = 128
    steps: int = 24
    heads: int = 2
    dim: int = 32
    lr: float = 1e-3
    target: float = 0.9  # r*: eviction rate the rate term pulls towards
    lam: float = 10.0
    sinks: int = 4
    window: int = 8
    val_sequences: int = 2
    seed: int = 0


def _losses(weights, config, gates: Gates, ids: list[int], cfg: GateTrainConfig):
    with torch.no_grad():
        teacher = torch.log_softmax(gated_forward(weights, config, ids, None)[0], -1)
    student, keep = gated_forward(weights, config, ids, gates, cfg.sinks, cfg.window)
    kl = (teacher.exp() * (teacher - torch.log_softmax(student, -1))).sum(-1).mean()
    rate = (1.0 - keep).mean()
    hard_rate = float((keep <= 0.5).float().mean())
    return kl, rate, hard_rate


def evaluate(weights, config, gates: Gates, val: list[list[int]], cfg: GateTrainConfig) -> dict:
    with torch.no_grad():
        out = [_losses(weights, config, gates, ids, cfg) for ids in val]
    return {"kl": round(sum(float(o[0]) for o in out) / len(out), 5),
            "natural_eviction_rate": round(sum(o[2] for o in out) / len(out), 4)}


def train_gates(loaded, tag: str, cfg: GateTrainConfig, progress: bool = True) -> dict:
    """Train on the corpus, save to the store, return the metadata. ``loaded``: a LoadedModel."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    config, weights = loaded.config, loaded.weights
    path = store.weights_path(KIND, tag, cfg.seed)
    train_seqs = corpus.sequences(loaded.tokenizer, cfg.seq_len, "train", cfg.seed)
    val = corpus.sequences(loaded.tokenizer, cfg.seq_len, "val", cfg.seed, cfg.val_sequences)
    if not train_seqs or not val:
        raise UserError(f"attention-gate: the corpus has no {cfg.seq_len}-token sequences for this tokenizer")
    gates = Gates(config, cfg.heads, cfg.dim, cfg.seed)
    meta = {"kind": KIND, "model": tag, "config": asdict(cfg), "corpus": "pydoc_data.topics (Python stdlib)"}
    t0 = time.perf_counter()
    before = evaluate(weights, config, gates, val, cfg)

    def step(i: int) -> torch.Tensor:
        kl, rate, _ = _losses(weights, config, gates, train_seqs[i % len(train_seqs)], cfg)
        return kl + cfg.lam * (cfg.target - rate) ** 2

    result = loop.train(KIND, path, gates, loop.LoopConfig(cfg.steps, cfg.lr), step, meta, progress)
    after = evaluate(weights, config, gates, val, cfg)
    meta = {**meta, **result, "val_before": before, "val_after": after,
            "params": sum(p.numel() for p in gates.parameters()),
            "wall_seconds_incl_eval": round(time.perf_counter() - t0, 1)}
    loop.finish(path, gates, meta)
    return meta


def load_gates(path, config, heads: int = 2, dim: int = 32) -> tuple[Gates, dict]:
    saved = store.load(path, KIND)
    c = saved["meta"]["config"]
    gates = Gates(config, c["heads"], c["dim"])
    gates.load_state_dict(saved["state"])
    gates.requires_grad_(False)
    return gates, saved["meta"]
