"""Load a model by name: the bundled SmolLM2, a local Hugging Face folder, or ``random:<preset>``."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from mpcache.core.errors import UserError
from mpcache.models.config import ModelConfig, expected_shapes
from mpcache.models.random_presets import PRESETS, random_weights
from mpcache.models.smollm2 import smollm2_folder
from mpcache.models.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer

DEFAULT_MODEL = "smollm2"


@dataclass
class LoadedModel:
    name: str
    config: ModelConfig
    weights: dict[str, torch.Tensor]  # Hugging Face parameter names, fp32
    tokenizer: Tokenizer
    load_seconds: float = 0.0
    folder: str | None = None
    extra: dict = field(default_factory=dict)


def load_model(spec: str = DEFAULT_MODEL, with_tokenizer: bool = True) -> LoadedModel:
    """Resolve ``spec`` and load it. Raises :class:`UserError` with one clear line on bad input."""
    start = time.perf_counter()
    if spec.startswith("random:"):
        preset = spec.split(":", 1)[1]
        if preset not in PRESETS:
            known = ", ".join(sorted(PRESETS))
            raise UserError(f"unknown random preset {preset!r} (known: {known})")
        config = PRESETS[preset]
        weights = random_weights(config, seed=0)
        tokenizer: Tokenizer = ByteTokenizer(config.vocab_size)
        return LoadedModel(spec, config, weights, tokenizer, time.perf_counter() - start)
    if spec == "smollm2":
        folder = smollm2_folder()
    else:
        folder = Path(spec).expanduser()
        if not folder.exists():
            raise UserError(
                f"unknown model {spec!r}: not 'smollm2', not 'random:<preset>', and no such folder"
            )
    config, weights = load_folder(folder)
    tokenizer = HFTokenizer(str(folder), config.eos_token_ids) if with_tokenizer else None
    return LoadedModel(spec, config, weights, tokenizer, time.perf_counter() - start, str(folder))


def load_folder(folder: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read ``config.json`` and the weights (safetensors or a torch .bin) of a HF model folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"model folder {folder} is not a directory")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"model folder {folder} has no config.json")
    try:
        config = ModelConfig.from_hf(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"model folder {folder}: bad config.json ({exc})") from None
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise UserError(f"model folder {folder} has no *.safetensors or pytorch_model*.bin weights")
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                weights.update(load_file(str(path)))
            else:
                weights.update(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # corrupt or truncated file: any reader error
            raise UserError(f"model folder {folder}: cannot read {path.name} ({exc})") from None
    weights = {k: v.float() for k, v in weights.items()}
    check_weights(config, weights, str(folder))
    return config, weights


def check_weights(config: ModelConfig, weights: dict[str, torch.Tensor], where: str) -> None:
    for name, shape in expected_shapes(config).items():
        if name not in weights:
            raise UserError(f"model {where}: missing weight {name}")
        if tuple(weights[name].shape) != shape:
            got = tuple(weights[name].shape)
            raise UserError(f"model {where}: weight {name} has shape {got}, expected {shape}")
