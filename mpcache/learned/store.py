"""Where trained scorers live (outside git: ~/.cache/mpcache/<kind>/) and how they are named.

Weights are keyed by the model's configuration (a hash of it) and the training seed. Two models
with the same configuration but other weights would share a file: pass the policy's ``weights=PATH``
option (and ``mpcache train ... --out PATH``) for such a model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mpcache.core.errors import UserError

if TYPE_CHECKING:
    from mpcache.models.config import ModelConfig

def cache_root() -> Path:
    return Path(os.environ.get("MPCACHE_CACHE", Path.home() / ".cache" / "mpcache"))


def model_tag(config: ModelConfig) -> str:
    """``L30-h576-<hash of the configuration>``."""
    blob = json.dumps(config.to_dict(), sort_keys=True)
    return f"L{config.num_layers}-h{config.hidden_size}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def weights_path(kind: str, tag: str, seed: int = 0) -> Path:
    return cache_root() / kind / f"{tag}-seed{seed}.pt"


def save(path: Path, state: dict, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state": state, "meta": meta}, tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written file


_LOADED: dict[str, dict] = {}


def load(path: Path, kind: str) -> dict:
    """``{"state": ..., "meta": ...}``; cached per path (policies are made fresh per sample)."""
    key = str(path)
    if key not in _LOADED:
        if not path.is_file():
            raise UserError(f"no trained {kind} weights at {path}: run `mpcache train {kind}` "
                            f"(mpcache eval trains them on first use)")
        _LOADED[key] = torch.load(path, map_location="cpu", weights_only=True)
    return _LOADED[key]
