"""Plots of eval records: one panel per prompt length, metric vs budget, one line per policy.

Budget-less policies (``full``) are drawn as a horizontal reference line. Chunked runs of one sweep
(same task, policy, budget, length, seed, model; different ``first_sample``) are merged into one
record weighted by their sample counts; otherwise, when a (policy, budget, length) appears in
several records (repeated runs), the latest one wins.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mpcache.core import optional
from mpcache.core.errors import UserError


def load_records(path: str) -> list[dict]:
    """Records of ``mpcache eval`` or ``mpcache bench mpc`` (``kind == "mpc"``), one per JSON line."""
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
        is_eval = isinstance(rec, dict) and {"task", "policy", "budget", "length"} <= rec.keys()
        if not (is_eval or (isinstance(rec, dict) and rec.get("kind") in ("mpc", "ops"))):
            raise UserError(f"{path}:{n}: not an mpcache eval or bench record")
        records.append(rec)
    if not records:
        raise UserError(f"{path} holds no records")
    return records


_AVERAGED = ("accuracy", "mean_new_tokens", "mean_attended_tokens", "mean_prompt_tokens", "kv_bytes")


def merge_chunks(records: list[dict]) -> list[dict]:
    """Merge the chunks of a sweep (disjoint sample ranges) into one record per configuration."""
    merged: dict[tuple, dict] = {}
    for rec in records:
        key = (rec["task"], rec["policy"], rec["budget"], rec["length"], rec.get("seed"), rec.get("model"),
               rec.get("max_new_tokens"))
        first = rec.get("first_sample", 0)
        cur = merged.get(key)
        if cur is None or first in cur["_firsts"]:  # new configuration, or a repeat: latest wins
            merged[key] = {**rec, "_firsts": {first}}
            continue
        n0, n1 = cur["samples"], rec["samples"]
        for field in _AVERAGED:
            if field in rec:
                cur[field] = round((cur[field] * n0 + rec[field] * n1) / (n0 + n1), 4)
        if "perplexity" in rec:  # same tokens per sample: geometric mean = exp(mean NLL)
            cur["perplexity"] = round(math.exp((math.log(cur["perplexity"]) * n0
                                                + math.log(rec["perplexity"]) * n1) / (n0 + n1)), 4)
        cur["seconds"] = round(cur.get("seconds", 0) + rec.get("seconds", 0), 2)
        cur["details"] = cur.get("details", []) + rec.get("details", [])
        cur["samples"] = n0 + n1
        cur["_firsts"].add(first)
    return [{k: v for k, v in rec.items() if k != "_firsts"} for rec in merged.values()]


def table(records: list[dict]) -> str:
    """Markdown table: one row per policy, one column per budget, a block per length."""
    metric = "perplexity" if "perplexity" in records[0] else "accuracy"
    lines = []
    for length in sorted({r["length"] for r in records}):
        rows = [r for r in records if r["length"] == length]
        budgets = sorted({r["budget"] for r in rows if r["budget"] < 1.0})
        n = max(r["samples"] for r in rows)
        lines.append(f"{rows[0]['task']} {metric}, L={length}, {n} samples, model {rows[0]['model']} "
                     "(cell: metric / mean attended tokens)")
        header = ["policy", *(f"{100 * b:g} %" for b in budgets), "100 %"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|---" * len(header) + "|")
        for policy in dict.fromkeys(r["policy"] for r in rows):
            cells = []
            for b in [*budgets, 1.0]:
                hit = [r for r in rows if r["policy"] == policy and r["budget"] == b]
                cells.append(f"{hit[0][metric]:.3g} / {hit[0]['mean_attended_tokens']:.0f}" if hit else "")
            lines.append(f"| {policy} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_records(records: list[dict], out: str) -> None:
    plt = optional.pyplot()

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
