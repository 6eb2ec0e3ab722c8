"""Attention-Gate (AG-style) gates trained to convergence on cached frozen-model features, by a
LAYER-LOCAL distillation ("AG-local"): no backward pass through the backbone.

The paper tunes the gates end to end (an LM loss through the whole model plus an eviction loss).
At 2,048 tokens that costs ~1 min and ~20 GB per step on one core (``gate_train``, kept as the
``e2e`` objective for short sequences), far too slow to converge here. AG-local keeps the paper's
parts that decide WHICH tokens go, one layer at a time: the gate's flags f = 1[g > 0] (straight-
through: forward hard, backward d sigmoid(g)) mask the prompt keys [0, P) of the frozen layer's
attention (sinks always kept; the keys [P, T) stay visible, like the policy's local window), and the
loss is the relative error of that layer's attention output for the "answer" queries [P, T),
||o_gated - o_full||^2 / ||o_full||^2 over the query heads, plus the eviction-rate term
lam * (r* - mean(1 - sigmoid(g)))^2. Gates of different layers do not interact in this loss, so a
step trains a random subset of layers of one sequence (the held-out loss always uses all layers).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

import torch

from mpcache.learned import featcache, store
from mpcache.learned.fit import FitConfig, fit
from mpcache.learned.gate import Gates
from mpcache.learned.gate_train import KIND
from mpcache.learned.locret_fit import corpus_provenance


@dataclass
class GateFitConfig:
    heads: int = 2
    dim: int = 32
    target: float = 0.9  # r*: eviction rate the rate term pulls towards
    lam: float = 10.0
    sinks: int = 4
    layers_per_step: int = 6
    query_stride: int = 4  # every 4th "answer" query enters the loss (4x cheaper, same span)
    seed: int = 0
    features: featcache.FeatureSpec = field(default_factory=featcache.FeatureSpec)
    fit: FitConfig = field(default_factory=lambda: FitConfig(lr=1e-3, eval_every=40, patience=6))


def new_gates(config, cfg: GateFitConfig) -> Gates:
    """Fresh gates with token-dependent logits around 0 (about half kept; the rate term then lowers
    the bias). A zero output layer and a +3 bias would keep everything with a zero reconstruction
    gradient, then flip every flag at once when the bias crosses 0."""
    gates = Gates(config, cfg.heads, cfg.dim, cfg.seed, bias=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():
        gates.wo.normal_(0.0, 1.0 / math.sqrt(gates.wo.shape[-1]), generator=gen)
    return gates


def layer_loss(gates: Gates, layer: int, x: torch.Tensor, config, p: int, cfg: GateFitConfig):
    """(reconstruction error, soft eviction rate, hard eviction rate) of one layer of one sequence."""
    q, k, v = featcache.split_qkv(x, config)
    t, d, hkv = x.shape[0], config.head_dim, config.num_kv_heads
    g = config.num_heads // hkv
    pos = torch.arange(p, t, cfg.query_stride)
    qa = featcache.rope(q, config)[:, pos].reshape(hkv, g * len(pos), d)  # group-major, as the cache
    kr = featcache.rope(k, config)
    scores = qa @ kr.transpose(1, 2) / math.sqrt(d)  # [Hkv, g*A, T]
    rows = pos.repeat(g)
    scores = scores.masked_fill(rows[None, :, None] < torch.arange(t)[None, None, :], float("-inf"))
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    full = (e / e.sum(-1, keepdim=True)) @ v
    logit = gates.prompt_logits(layer, x[:p].float())[0]  # [P, Hkv]
    soft = torch.sigmoid(logit)
    flag = (logit > 0).float() + soft - soft.detach()  # straight-through
    forced = (torch.arange(p) < cfg.sinks).float()[:, None]
    keep = forced + (1 - forced) * flag  # [P, Hkv]
    m = torch.cat([keep.T, torch.ones(hkv, t - p)], 1)[:, None, :]  # [Hkv, 1, T]
    eg = e * m
    gated = (eg / eg.sum(-1, keepdim=True).clamp_min(1e-30)) @ v
    err = ((gated - full) ** 2).sum() / (full**2).sum()
    rate = (1 - soft[cfg.sinks :]).mean()
    return err, rate, float((logit[cfg.sinks :] <= 0).float().mean())


def sequence_loss(gates: Gates, item: dict, config, cfg: GateFitConfig, layers=None):
    x, p = item["x"], item["labels"].shape[1]
    layers = range(x.shape[0]) if layers is None else layers
    parts = [layer_loss(gates, layer, x[layer], config, p, cfg) for layer in layers]
    errs, rates, hard = zip(*parts, strict=True)
    err, rate = sum(errs) / len(errs), sum(rates) / len(rates)
    return err + cfg.lam * (cfg.target - rate) ** 2, err, sum(hard) / len(hard)


def train(model, tokenizer, cfg: GateFitConfig, records=None, progress: bool = True) -> dict:
    """Cache the features (once), train, save the best held-out gates to the store; return the metadata."""
    config, tag = model.config, store.model_tag(model.config)
    files = featcache.ensure(model, tokenizer, cfg.features, progress, reverse=True)
    val = [featcache.load(p) for p in files["val"]]
    gates = new_gates(config, cfg)
    per_step = min(cfg.layers_per_step, config.num_layers)

    def step(i: int) -> torch.Tensor:  # sequence and layers drawn as a function of the step (resumable)
        rng = random.Random(f"gate:{cfg.seed}:{i}")
        item = featcache.load(files["train"][rng.randrange(len(files["train"]))])
        layers = sorted(rng.sample(range(config.num_layers), per_step))
        return sequence_loss(gates, item, config, cfg, layers)[0]

    def evaluate() -> dict:
        with torch.no_grad():
            out = [sequence_loss(gates, item, config, cfg) for item in val]
        n = len(out)
        return {"loss": round(sum(float(o[0]) for o in out) / n, 6),
                "attn_rel_err": round(sum(float(o[1]) for o in out) / n, 6),
                "natural_eviction_rate": round(sum(o[2] for o in out) / n, 4)}

    meta = {"kind": KIND, "model": tag, "config": asdict(cfg), "objective": "AG-local",
            "corpus": corpus_provenance(tokenizer, cfg.features)}
    path = store.weights_path(KIND, tag, cfg.seed)
    before = evaluate()
    result = fit(KIND, path.with_suffix(".ckpt"), gates, cfg.fit, step, evaluate, meta, records, progress)
    after = evaluate()
    meta = {**meta, **result, "val_before": before, "val_after": after, "recipe": "converged",
            "params": sum(p.numel() for p in gates.parameters())}
    store.save(path, {k: v.detach().clone() for k, v in gates.state_dict().items()}, meta)
    path.with_suffix(".ckpt").unlink(missing_ok=True)
    return meta
