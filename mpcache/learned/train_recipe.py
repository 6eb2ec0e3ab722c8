"""The default ("converged") training of the trained scorers, as ``mpcache train`` and ``mpcache eval``
run it: the frozen model's features of 24 + 4 windows of 2,048 tokens of the Wikipedia corpus are
cached once (~20 s each on one core, shared by locret and attention-gate), then the heads or gates
train until the held-out loss is flat (or a step/time cap). Small models (tests) get short windows.
"""

from __future__ import annotations

from pathlib import Path

from mpcache.core.backend import PlainBackend
from mpcache.learned import featcache, gate_fit, locret_fit
from mpcache.models import Transformer


def feature_spec(config, seq_len: int | None, sequences: int | None) -> featcache.FeatureSpec:
    spec = featcache.FeatureSpec()
    if seq_len is None and config.hidden_size < 256:  # a test-sized random model: short windows
        seq_len = 128
    if seq_len:
        spec.seq_len, spec.prompt_len = seq_len, (3 * seq_len) // 4
    if sequences:
        spec.train = sequences
    return spec


def train_converged(kind: str, loaded, seed: int = 0, steps: int | None = None, seq_len: int | None = None,
                    progress: bool = True, sequences: int | None = None, max_minutes: float | None = None,
                    records: str | None = None) -> dict:
    model = Transformer(loaded.config, loaded.weights, PlainBackend())
    spec = feature_spec(loaded.config, seq_len, sequences)
    cfg = locret_fit.LocretFitConfig(seed=seed, features=spec) if kind == "locret" else \
        gate_fit.GateFitConfig(seed=seed, features=spec)
    if steps:
        cfg.fit.max_steps = steps
        cfg.fit.min_steps = min(cfg.fit.min_steps, steps)
        cfg.fit.warmup = min(cfg.fit.warmup, max(1, steps // 10))
        cfg.fit.eval_every = min(cfg.fit.eval_every, max(1, steps // 4))
    if max_minutes:
        cfg.fit.max_seconds = 60.0 * max_minutes
    out = Path(records) if records else None
    trainer = locret_fit.train if kind == "locret" else gate_fit.train
    return trainer(model, loaded.tokenizer, cfg, out, progress)
