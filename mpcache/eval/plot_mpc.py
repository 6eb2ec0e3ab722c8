"""Plot of MPC benchmark records (``mpcache bench mpc``): what one private token costs.

Top row: per decode token (averaged over the generated tokens after the first); bottom row: the
prefill of the whole prompt, apart (it is paid once, and it dwarfs a token). Columns: online
traffic (dealer traffic dashed), communication rounds, estimated wall time on a LAN and a WAN
(compute + bytes / bandwidth + rounds x RTT) with plaintext on the same machine as a reference.
All axes start at zero.
"""

from __future__ import annotations

from pathlib import Path

from mpcache.core import optional

NOTE = ("MB = all traffic between the two parties (party 0's count, both directions); dealer traffic "
        "(TTP) dashed. LAN: 1 Gbit/s, 0.5 ms RTT; WAN: 100 Mbit/s, 40 ms RTT. Counts are exact; seconds "
        "were measured on a shared 2-core machine (upper bounds).")


def is_mpc_record(record: dict) -> bool:
    return record.get("kind") == "mpc"


def series_label(r: dict) -> str:
    """Readable legend entry: policy and budget, dealer, mask reuse."""
    budget = r.get("budget", 1.0)
    policy = "full cache" if r["policy"] == "full" or budget >= 1 else f"{r['policy']} at {budget:.0%}"
    dealer = "TTP dealer" if r["dealer"] == "ttp" else "TFP (server deals)"
    reuse = "" if r.get("mask_reuse", True) else ", no mask reuse"
    prefill = " (plaintext prefill: cost only)" if r.get("prefill_mode") == "plaintext" else ""
    approx = f", --approx {r['approx']}" if r.get("approx", "v1") != "v1" else ""
    return f"{policy}, {dealer}{reuse}{approx}{prefill}"


PANELS = [  # (column title, y label, value of a cost dict, plaintext reference key or None)
    ("traffic", "MB", lambda c: c["online_bytes"] / 1e6, None),
    ("rounds", "rounds", lambda c: c["rounds"], None),
    ("est. LAN time", "seconds", lambda c: c["lan_s"], "plain"),
    ("est. WAN time", "seconds", lambda c: c["wan_s"], "plain"),
]


def plot_mpc(records: list[dict], out: str):
    """Write the figure to ``out`` and return it."""
    plt = optional.pyplot()

    series: dict[str, list[dict]] = {}
    for r in records:
        series.setdefault(series_label(r), []).append(r)
    models = sorted({r["model"] for r in records})
    fig, axes = plt.subplots(2, len(PANELS), figsize=(4.2 * len(PANELS), 7.4), squeeze=False)
    rows = [("decode_per_token", "per decode token", "plaintext_per_token_s"),
            ("prefill", "prefill (whole prompt, once)", "plaintext_prefill_s")]
    for row, (key, row_title, plain_key) in enumerate(rows):
        for col, (title, unit, value, ref) in enumerate(PANELS):
            ax = axes[row][col]
            for i, (label, rs) in enumerate(sorted(series.items())):
                rs = sorted(rs, key=lambda r: r["length"])
                xs = [r["length"] for r in rs]
                color = f"C{i}"
                ax.plot(xs, [value(r[key]) for r in rs], "o-", color=color, label=label)
                if col == 0 and any(r[key].get("dealer_bytes") for r in rs):
                    ax.plot(xs, [r[key]["dealer_bytes"] / 1e6 for r in rs], "o--", color=color,
                            label=f"{label}: dealer traffic")
            if ref:
                plain = sorted({(r["length"], r[plain_key]) for r in records if r.get(plain_key) is not None})
                if plain:
                    ax.plot([p[0] for p in plain], [p[1] for p in plain], "k:", marker="x",
                            label="plaintext (exact, same machine)")
            ax.set_title(f"{title}, {row_title}", fontsize=9)
            ax.set_xlabel("prompt length (tokens)")
            ax.set_ylabel(unit)
            ax.set_xlim(left=0, right=max(r["length"] for r in records) * 1.1)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes.flat:  # one legend for the figure: every series once
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)
    fig.suptitle(f"Private generation under 2PC ({', '.join(models)}): cost per decode token and of the "
                 "prefill, vs prompt length", fontsize=11)
    fig.text(0.5, 0.075, NOTE, ha="center", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.12, 1, 0.96))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return fig
