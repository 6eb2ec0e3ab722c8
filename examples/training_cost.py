"""Training cost of the trained eviction scorers (locret, attention-gate) for a model: parameters,
training seconds, validation before/after, and a PNG of the training loss per step.

    python examples/training_cost.py [--model smollm2] [--seed 0] [--out docs/seed_training.png]
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="PNG of the loss curves")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mpcache.learned import store
    from mpcache.models import load_model

    tag = store.model_tag(load_model(args.model, with_tokenizer=False).config)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, kind in zip(axes, ("locret", "attention-gate"), strict=True):
        path = store.weights_path(kind, tag, args.seed)
        if not path.is_file():
            print(f"{kind}: not trained ({path})")
            continue
        meta = store.load(path, kind)["meta"]
        keys = ("params", "train_seconds", "wall_seconds_incl_eval", "val_before", "val_after")
        print(kind, json.dumps({k: meta.get(k) for k in keys} | {"steps": len(meta["losses"])}))
        ax.plot(range(1, len(meta["losses"]) + 1), meta["losses"], marker=".")
        ax.set(title=f"{kind}: {meta['params'] / 1e6:.2f}M params, {meta['train_seconds'] / 60:.1f} min",
               xlabel="step", ylabel="training loss")
    fig.tight_layout()
    if args.out:
        fig.savefig(args.out, dpi=110)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
