"""Locret's retaining heads trained to convergence on cached frozen-model features.

The recipe is the authors' (``train/train.py``, ``train/data_gen.py``) scaled to one CPU core:
label S[h, k] = max over the "answer" queries and the group's query heads of the pre-softmax logits
q.k/sqrt(d) (post-RoPE) for the "prompt" tokens k; loss SmoothL1(pred, S) + 0.0025 * MSE of adjacent
predictions; AdamW 5e-4 (0.9, 0.95), clip by value 0.5, fp32, heads 960 -> 128 -> SiLU -> 3 per layer.
Differences, said where they matter: generic packed Wikipedia summaries instead of LongAlpaca
(prompt = the first 3/4 of a 2,048-token window, answer = the last quarter), a fixed set of
sequences revisited for many epochs (the authors see 3,000 distinct ones once), cosine decay with an
early stop on held-out loss instead of a fixed 3,000-step linear schedule.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import torch

from mpcache.learned import featcache, store, wiki
from mpcache.learned.fit import FitConfig, fit
from mpcache.learned.locret import KIND, RetainingHeads, loss_fn, top_overlap


@dataclass
class LocretFitConfig:
    hidden: int = 128
    smooth: float = 0.0025
    seed: int = 0
    features: featcache.FeatureSpec = field(default_factory=featcache.FeatureSpec)
    fit: FitConfig = field(default_factory=lambda: FitConfig(lr=5e-4, eval_every=25))


def sequence_loss(heads: RetainingHeads, item: dict, smooth: float, overlap: bool = False):
    x, y = item["x"], item["labels"]
    p = y.shape[1]
    total, hits = 0.0, []
    for layer in range(x.shape[0]):
        pred = heads(layer, x[layer, :p].float())
        total = total + loss_fn(pred, y[layer], smooth)
        if overlap:
            hits.append(top_overlap(pred.detach(), y[layer]))
    return total / x.shape[0], (sum(hits) / len(hits) if hits else None)


def train(model, tokenizer, cfg: LocretFitConfig, records=None, progress: bool = True) -> dict:
    """Cache the features (once), train, save the best held-out heads to the store; return the metadata."""
    tag = store.model_tag(model.config)
    files = featcache.ensure(model, tokenizer, cfg.features, progress)
    val = [featcache.load(p) for p in files["val"]]
    heads = RetainingHeads.for_model(model.config, cfg.hidden, cfg.seed)
    n = len(files["train"])

    def step(i: int) -> torch.Tensor:  # a fresh shuffle per epoch, a function of the step (resumable)
        epoch, pos = divmod(i, n)
        order = list(range(n))
        random.Random(f"locret:{cfg.seed}:{epoch}").shuffle(order)
        return sequence_loss(heads, featcache.load(files["train"][order[pos]]), cfg.smooth)[0]

    def evaluate() -> dict:
        with torch.no_grad():
            out = [sequence_loss(heads, item, cfg.smooth, overlap=True) for item in val]
        return {"loss": round(sum(float(o[0]) for o in out) / len(out), 6),
                "top10_overlap": round(sum(o[1] for o in out) / len(out), 4)}

    meta = {"kind": KIND, "model": tag, "config": asdict(cfg),
            "corpus": corpus_provenance(tokenizer, cfg.features)}
    path = store.weights_path(KIND, tag, cfg.seed)
    before = evaluate()
    result = fit(KIND, path.with_suffix(".ckpt"), heads, cfg.fit, step, evaluate, meta, records, progress)
    after = evaluate()
    meta = {**meta, **result, "val_before": before, "val_after": after, "recipe": "converged",
            "params": sum(p.numel() for p in heads.parameters())}
    store.save(path, {k: v.detach().clone() for k, v in heads.state_dict().items()}, meta)
    path.with_suffix(".ckpt").unlink(missing_ok=True)
    return meta


def corpus_provenance(tokenizer, spec: featcache.FeatureSpec) -> dict:
    return {"name": wiki.NAME, "package": wiki.PACKAGE, "tokens": wiki.corpus_tokens(tokenizer),
            "seq_len": spec.seq_len, "prompt_len": spec.prompt_len,
            "train_sequences": spec.train, "val_sequences": spec.val}
