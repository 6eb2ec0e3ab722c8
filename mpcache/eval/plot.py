"""Plots of eval records: one panel per prompt length, metric vs budget, one line per policy.

Budget-less policies (``full``) are drawn as a horizontal reference line. When a (policy, budget,
length) appears in several records (repeated runs), the latest one wins.
"""

from __future__ import annotations

import json
from pathlib import Path

from mpcache.errors import UserError


def load_records(path: str) -> list[dict]:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"no such records file: {path}")
    records = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{n}: not a JSON line") from None
        if not isinstance(rec, dict) or not {"task", "policy", "budget", "length"} <= rec.keys():
            raise UserError(f"{path}:{n}: not an mpcache eval record")
        records.append(rec)
    if not records:
        raise UserError(f"{path} holds no records")
    return records


def plot_records(records: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "perplexity" if "perplexity" in records[0] else "accuracy"
    latest = {(r["policy"], r["budget"], r["length"]): r for r in records}
    lengths = sorted({k[2] for k in latest})
    policies = list(dict.fromkeys(k[0] for k in latest))
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 4), squeeze=False)
    for ax, length in zip(axes[0], lengths, strict=True):
        for policy in policies:
            points = sorted((b, r[metric]) for (p, b, n), r in latest.items() if p == policy and n == length)
            if not points:
                continue
            if policy.split(":")[0] == "full" or len(points) == 1 and points[0][0] == 1.0:
                ax.axhline(points[-1][1], color="black", linestyle="--", label=f"{policy}")
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot([100 * x for x in xs], ys, marker="o", label=policy)
        first = next(r for r in latest.values() if r["length"] == length)
        ax.set_title(f"{first['task']}, L={length}, {first['samples']} samples, {first['model']}")
        ax.set_xlabel("budget (% of prompt tokens attended per step)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
