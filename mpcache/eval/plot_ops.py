"""Plot of `mpcache bench ops` records: per operator, each implementation's rounds, MB, seconds and
max error (grouped bars)."""

from __future__ import annotations

from mpcache.core import optional


def is_ops_record(record: dict) -> bool:
    return record.get("kind") == "ops"


def plot_ops(records: list[dict], out: str) -> None:
    plt = optional.pyplot()

    ops = list(dict.fromkeys(r["op"] for r in records))
    impls = list(dict.fromkeys(r["impl"] for r in records))
    latest = {(r["op"], r["impl"]): r for r in records}  # the last record of each pair
    panels = [("rounds", lambda r: r["rounds"], False),
              ("online MB", lambda r: r["online_bytes"] / 1e6, True),
              ("seconds", lambda r: r["seconds"], True),
              ("max error", lambda r: max(r["max_error"], 1e-9), True)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8))
    width = 0.8 / len(impls)
    for ax, (title, value, log) in zip(axes, panels, strict=True):
        for k, impl in enumerate(impls):
            xs = [i + k * width for i, op in enumerate(ops) if (op, impl) in latest]
            ys = [value(latest[op, impl]) for op in ops if (op, impl) in latest]
            ax.bar(xs, ys, width, label=impl)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(ops))])
        ax.set_xticklabels(ops, rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
