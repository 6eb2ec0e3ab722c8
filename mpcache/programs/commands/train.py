"""``mpcache train {locret,attention-gate}``: train a policy's scorer with the model frozen; the
weights go to ~/.cache/mpcache/<kind>/ (outside git; $MPCACHE_CACHE overrides), where the policy and
``mpcache eval`` find them. Interrupted runs resume from their checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mpcache.core.backend import PlainBackend
from mpcache.core.errors import UserError
from mpcache.learned import store
from mpcache.learned.gate_train import GateTrainConfig, train_gates
from mpcache.learned.locret import LocretTrainConfig, train_heads
from mpcache.learned.train_recipe import train_converged
from mpcache.models import DEFAULT_MODEL, Transformer, load_model
from mpcache.policies import parse_spec

KINDS = ("locret", "attention-gate")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train locret's retaining heads or attention-gate's gates (plaintext)")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--model", default=DEFAULT_MODEL, help="smollm2 | PATH to HF folder | random:PRESET")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    p.add_argument("--steps", type=int, default=None, help="step cap (one sequence each; stops earlier "
                   "once the held-out loss is flat)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per training sequence (default 2048)")
    p.add_argument("--sequences", type=int, default=None, help="training sequences whose features are "
                   "cached (default 24; 4 held out)")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock cap on the training steps")
    p.add_argument("--records", default=None, help="JSON-lines file for the per-step training record")
    p.add_argument("--recipe", choices=("converged", "legacy"), default="converged",
                   help="converged: cached features, early stop (default); legacy: the first short "
                   "recipe (python help topics, attention-gate end to end)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def train(kind: str, loaded, seed: int = 0, steps: int | None = None, seq_len: int | None = None,
          progress: bool = True, recipe: str = "converged", **options) -> dict:
    """Train ``kind`` for ``loaded`` (a LoadedModel) and save it where the policy looks by default."""
    if recipe == "converged":
        return train_converged(kind, loaded, seed, steps, seq_len, progress, **options)
    tag = store.model_tag(loaded.config)
    if kind == "locret":
        cfg = LocretTrainConfig(seed=seed)
        if seq_len:
            cfg.seq_len, cfg.prompt_len = seq_len, (3 * seq_len) // 4
        cfg.steps = steps or cfg.steps
        model = Transformer(loaded.config, loaded.weights, PlainBackend())
        return train_heads(model, loaded.tokenizer, tag, cfg, progress)

    cfg = GateTrainConfig(seed=seed)
    cfg.seq_len = seq_len or cfg.seq_len
    cfg.steps = steps or cfg.steps
    return train_gates(loaded, tag, cfg, progress)


def ensure_trained(specs: list[str], loaded, progress: bool = True) -> None:
    """Train (after saying so) the default weights of every trained policy in ``specs`` that lacks them."""
    for spec in specs:
        policy = parse_spec(spec, 0.5)
        if policy.name not in KINDS or getattr(policy, "weights", "") not in ("",):
            continue
        path: Path = policy.weights_path(loaded.config)
        if path.is_file():
            continue
        print(f"mpcache: no trained {policy.name} weights for this model at {path}; training them now "
              f"(same as `mpcache train {policy.name} --seed {policy.seed}`)", file=sys.stderr)
        train(policy.name, loaded, seed=policy.seed, progress=progress)


def run(args: argparse.Namespace) -> int:
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    if args.seq_len is not None and args.seq_len < 16:
        raise UserError(f"--seq-len must be at least 16, got {args.seq_len}")
    loaded = load_model(args.model)
    meta = train(args.kind, loaded, args.seed, args.steps, args.seq_len, not args.no_progress, args.recipe,
                 sequences=args.sequences, max_minutes=args.max_minutes, records=args.records)

    path = store.weights_path(args.kind, store.model_tag(loaded.config), args.seed)
    keys = ("params", "steps", "stop", "train_seconds", "final_train_loss", "best_val_loss", "val_before",
            "val_after", "corpus")
    summary = {k: meta[k] for k in keys if k in meta}
    print(f"{args.kind}: saved {path}\n{json.dumps(summary)}")
    return 0
