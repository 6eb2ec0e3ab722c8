"""Plot of MPC benchmark records: bytes / rounds / time per generated token vs prompt length."""

from __future__ import annotations

from pathlib import Path


def is_mpc_record(record: dict) -> bool:
    return record.get("kind") == "mpc"


def plot_mpc(records: list[dict], out: str) -> None:
    """One panel per cost figure, one line per (model, policy, dealer, mask reuse)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = {}
    for r in records:
        label = f"{r['model']} {r['policy']} {r['dealer']} {'reuse' if r['mask_reuse'] else 'no reuse'}"
        if r.get("prefill_mode") == "plaintext":
            label += " (plaintext prefill: cost only)"
        series.setdefault(label, []).append(r)
    panels = [
        ("online MB / token", lambda d: d["online_bytes"] / 1e6),
        ("rounds / token", lambda d: d["rounds"]),
        ("est. LAN s / token", lambda d: d["lan_s"]),
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
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
