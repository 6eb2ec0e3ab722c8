"""What a trained scorer was trained on and how far, as stored next to its weights: recorded with
every evaluation (``record_extras``) and printed by ``mpcache eval`` before it runs."""

from __future__ import annotations

import json

KEYS = ("recipe", "objective", "steps", "stop", "best_step", "train_seconds", "final_train_loss",
        "final_val_loss", "best_val_loss")


def summary(meta: dict) -> dict:
    """The provenance fields of a weights file's metadata (empty for untrained weights)."""
    if not meta:
        return {}
    out = {k: meta[k] for k in KEYS if k in meta}
    corpus = meta.get("corpus")
    out["corpus"] = corpus if isinstance(corpus, dict) else {"name": corpus}
    out["seed"] = meta.get("config", {}).get("seed")
    if "val_after" in meta:
        out["val_after"] = meta["val_after"]
    if "steps" not in out and "losses" in meta:  # the first (legacy) recipe
        out.update(recipe="legacy", steps=len(meta["losses"]), final_train_loss=meta["losses"][-1])
    return out


def line(name: str, prov: dict) -> str:
    """One line for the console from a ``summary``."""
    return f"{name} weights: {json.dumps(prov) if prov else 'untrained (random initialisation)'}"
