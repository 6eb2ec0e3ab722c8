"""Training curves of the trained eviction scorers (locret, attention-gate) from their per-step records
(``mpcache train KIND --records docs/records/seed_training_KIND.jsonl``): training loss (a moving
average, and raw in light) and held-out loss per step, one panel per scorer; prints the provenance
stored next to the weights when they are on this machine.

    python examples/training_cost.py [--records docs/records] [--out docs/seed_training.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mpcache.learned import provenance, store
from mpcache.models import load_model

KINDS = ("locret", "attention-gate")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def moving_average(values: list[float], width: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - width] if i >= width else 0.0)
        out.append(acc / min(i + 1, width))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", default="docs/records", help="folder of seed_training_<kind>.jsonl")
    p.add_argument("--model", default="smollm2", help="print the provenance of this model's stored weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="PNG of the loss curves")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = store.model_tag(load_model(args.model, with_tokenizer=False).config)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, kind in zip(axes, KINDS, strict=True):
        weights = store.weights_path(kind, tag, args.seed)
        if weights.is_file():
            print(provenance.line(kind, provenance.summary(store.load(weights, kind)["meta"])))
        path = Path(args.records) / f"seed_training_{kind}.jsonl"
        if not path.is_file():
            print(f"{kind}: no records at {path}")
            continue
        recs = read(path)
        steps = [r["step"] for r in recs if "train_loss" in r]
        train = [r["train_loss"] for r in recs if "train_loss" in r]
        held = [(r["step"], r["val"]["loss"]) for r in recs if "val" in r]
        ax.plot(steps, train, color="tab:blue", alpha=0.2, lw=0.6)
        ax.plot(steps, moving_average(train, 25), color="tab:blue", label="training (moving avg 25)")
        ax.plot(*zip(*held, strict=True), color="tab:red", marker=".", label="held-out")
        minutes = recs[-1].get("seconds", 0) / 60
        title = f"{kind}: {steps[-1] if steps else 0} steps, {minutes:.0f} min (1 thread, shared CPU)"
        ax.set(title=title, xlabel="step", ylabel="loss", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    if args.out:
        fig.savefig(args.out, dpi=110)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
