"""Frozen-model features and labels, computed once per training sequence and cached on disk.

The backbone never trains, so its activations on a training sequence never change: one full-cache
prefill per sequence (the harness's own prefill) gives, per layer, every token's pre-RoPE [q; k; v]
(the scorers' input, [T, (H + 2 Hkv) d], stored fp16) and Locret's label S [P, Hkv] (fp32) for
the "prompt" tokens [0, P) from the "answer" queries [P, T). Everything else the trainers need
(post-RoPE q/k, v) is exactly recomputable from the stored features, since RoPE is a rotation with
public angles. Heads and gates then train for thousands of steps at a few seconds each instead of
one ~20 s prefill per step.

One file per sequence (``<cache>/features/<model tag>/<corpus>-T<len>-P<prompt>/<split>-<i>.pt``),
written atomically; a run that is killed resumes where it stopped.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mpcache.learned import features, store, wiki
from mpcache.learned.locret import labels
from mpcache.models.transformer import rope_tables


@dataclass
class FeatureSpec:
    seq_len: int = 2048  # as long as the evaluation's prompts (needle/ppl at L = 2000)
    prompt_len: int = 1536  # label "answer" queries: the last quarter
    train: int = 24  # ~20-60 s each to cache on one shared core
    val: int = 4


def folder(tag: str, spec: FeatureSpec) -> Path:
    return store.cache_root() / "features" / tag / f"{wiki.NAME}-T{spec.seq_len}-P{spec.prompt_len}"


def paths(tag: str, spec: FeatureSpec, split: str) -> list[Path]:
    n = spec.train if split == "train" else spec.val
    return [folder(tag, spec) / f"{split}-{i:04d}-of-{n:04d}.pt" for i in range(n)]


def ensure(model, tokenizer, spec: FeatureSpec, progress: bool = True,
           reverse: bool = False) -> dict[str, list[Path]]:
    """Compute the missing sequence files (both splits) and return their paths. Two trainers started
    together share the work: one goes forward (``reverse=False``), the other backward, each skipping
    the files the other has written, then waiting for the one the other is still writing."""
    tag = store.model_tag(model.config)
    out: dict[str, list[Path]] = {}
    for split in ("val", "train"):
        todo = paths(tag, spec, split)
        out[split] = todo
        missing = [i for i, p in enumerate(todo) if not p.is_file()]
        if not missing:
            continue
        seqs = wiki.windows(tokenizer, spec.seq_len, split, len(todo))
        if len(seqs) < len(todo):
            raise ValueError(f"{split}: only {len(seqs)} windows of {spec.seq_len} tokens")
        bar = tqdm(total=len(todo), initial=len(todo) - len(missing), desc=f"features {split}", unit="seq",
                   disable=not progress, file=sys.stderr)
        for i in reversed(missing) if reverse else missing:
            if not todo[i].is_file():
                _write(todo[i], compute(model, seqs[i], spec.prompt_len), seqs[i])
            bar.update(1)
        bar.close()
        waited = 0.0
        while not all(p.is_file() for p in todo) and waited < 600:  # the other trainer's last file
            time.sleep(2.0)
            waited += 2.0
    return out


@torch.no_grad()
def compute(model, ids: list[int], prompt_len: int) -> dict[str, torch.Tensor]:
    per_layer = features.prefill_features(model, ids)
    x = torch.stack([f[0] for f in per_layer]).half()  # [L, T, in]
    y = torch.stack([labels(q, k, prompt_len) for _, q, k in per_layer])  # [L, P, Hkv]
    return {"x": x, "labels": y.float()}


def _write(path: Path, item: dict[str, torch.Tensor], ids: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two trainers may meet on one file
    torch.save({**item, "ids": torch.tensor(ids, dtype=torch.int32)}, tmp)
    tmp.replace(path)


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def split_qkv(x: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pre-RoPE features [T, in] -> q [H, T, d], k [Hkv, T, d], v [Hkv, T, d] (fp32)."""
    t, d = x.shape[0], config.head_dim
    h, hkv = config.num_heads, config.num_kv_heads
    x = x.float()
    q = x[:, : h * d].view(t, h, d).transpose(0, 1)
    k = x[:, h * d : (h + hkv) * d].view(t, hkv, d).transpose(0, 1)
    v = x[:, (h + hkv) * d :].view(t, hkv, d).transpose(0, 1)
    return q, k, v


def rope(x: torch.Tensor, config) -> torch.Tensor:
    """RoPE at positions 0..T-1 of x [..., T, d] (the inverse of ``features.unrope``)."""
    cos, sin = rope_tables(config, torch.arange(x.shape[-2]))
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin
