"""``mpcache plot``: bytes / rounds / time per generated token vs prompt length, from JSON records."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mpcache.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot MPC benchmark records (JSON lines) against prompt length")
    p.add_argument("--json", required=True, help="records written by `mpcache bench mpc`")
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(run=run)


def load_records(path: str) -> list[dict]:
    if not Path(path).is_file():
        raise UserError(f"no such file: {path}")
    records = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{n}: not a JSON record") from None
        if record.get("kind") == "mpc":
            records.append(record)
    if not records:
        raise UserError(f"{path} holds no `mpcache bench mpc` records")
    return records


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = load_records(args.json)
    series: dict[str, list[dict]] = {}
    for r in records:
        label = f"{r['model']} {r['policy']} {r['dealer']} {'reuse' if r['mask_reuse'] else 'no reuse'}"
        series.setdefault(label, []).append(r)
    panels = [
        ("online MB / token", lambda d: d["online_bytes"] / 1e6),
        ("rounds / token", lambda d: d["rounds"]),
        ("compute s / token", lambda d: d["compute_s"]),
        ("est. WAN s / token", lambda d: d["wan_s"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (title, value) in zip(axes, panels, strict=True):
        for label, rs in sorted(series.items()):
            rs = sorted(rs, key=lambda r: r["length"])
            ax.plot([r["length"] for r in rs], [value(r["decode_per_token"]) for r in rs], "o-", label=label)
        ax.set_title(title)
        ax.set_xlabel("prompt length (tokens)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out} ({len(records)} records)")
    return 0
