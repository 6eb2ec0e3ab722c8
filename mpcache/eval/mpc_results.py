"""docs/results/mpc_policies.md from the committed records docs/records/mpc_policies*.jsonl.

    python -m mpcache.eval.mpc_results [--records DIR] [--out FILE]

Records are the JSON lines of ``mpcache bench mpc --json`` (``kind: mpc``: per decode token, by
phase) and of ``mpcache eval needle|ppl --json`` (``task``). Each bench file is one run: a policy is
compared with the ``full`` record of the same file and prompt length (same machine, same load), so
byte and round ratios are exact and compute ratios are as fair as the machine allows. The options
table compares two records named in ``OPTIONS`` (an idea off, then on).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

RECORDS = Path("docs/records")
OUT = Path("docs/results/mpc_policies.md")
PATTERN = "mpc_policies*.jsonl"


@dataclass(frozen=True)
class Cost:
    """Per decode token: online MB, rounds, estimated LAN seconds, compute seconds."""

    mb: float
    rounds: float
    lan_s: float
    compute_s: float

    @classmethod
    def of(cls, record: dict) -> Cost:
        phases = record["phases"].values()
        return cls(sum(p["online_bytes"] for p in phases) / 1e6, sum(p["rounds"] for p in phases),
                   sum(p["lan_s"] for p in phases), sum(p["compute_s"] for p in phases))


# (idea, (file stem, policy) with the idea off, (file stem, policy) with it on). The old numerics
# were measured by the same bench before the change (the "before" file), the rest in one run.
OPTIONS: list[tuple[str, tuple[str, str], tuple[str, str]]] = [
    ("argmax + softmax shift + selection maxima by bounded comparisons (full)",
     ("mpc_policies_before", "full"), ("mpc_policies_2048", "full")),
    ("argmax + softmax shift + selection maxima by bounded comparisons (old mpcache default)",
     ("mpc_policies_before", "mpcache"), ("mpc_policies_2048", "mpcache")),
    ("level-1 parents (summaries) before token scores, s2=8",
     ("mpc_policies_2048", "mpcache"), ("mpc_policies_2048", "mpcache:hierarchy=true:s2=8")),
    ("... with a quarter of the parents (r1=0.25)",
     ("mpc_policies_2048", "mpcache:hierarchy=true:s2=8"),
     ("mpc_policies_2048", "mpcache:hierarchy=true:s2=8:r1=0.25")),
    ("... children of 16 tokens (s2=16)",
     ("mpc_policies_2048", "mpcache:hierarchy=true:s2=8"),
     ("mpc_policies_2048", "mpcache:hierarchy=true:s2=16")),
]


def load(records: Path) -> dict[str, list[dict]]:
    """Records by file stem."""
    out: dict[str, list[dict]] = {}
    for path in sorted(records.glob(PATTERN)):
        out[path.stem] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def needle_scores(files: dict[str, list[dict]]) -> dict[tuple[str, float, int], dict]:
    """(policy, budget, length) -> the needle record with the most samples."""
    best: dict[tuple[str, float, int], dict] = {}
    for records in files.values():
        for r in records:
            if r.get("task") != "needle":
                continue
            key = (r["policy"], float(r["budget"]), int(r["length"]))
            if key not in best or r["samples"] > best[key]["samples"]:
                best[key] = r
    return best


def _needle(scores: dict, policy: str, budget: float, length: int = 2000) -> str:
    r = scores.get((policy, budget, length))
    return f"{r['accuracy']:.3f} ({r['samples']})" if r else "-"


def cost_table(files: dict[str, list[dict]], scores: dict) -> list[str]:
    lines = ["| run | L | policy | MB | rounds | est. LAN s | compute s | bytes / full | rounds / full "
             "| LAN / full | compute / full | needle L=2000 (samples) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for stem, records in files.items():
        bench = [r for r in records if r.get("kind") == "mpc"]
        for r in bench:
            full = next((f for f in bench if f["policy"] == "full" and f["length"] == r["length"]), None)
            c = Cost.of(r)
            ratios = ["-"] * 4
            if full is not None:
                f = Cost.of(full)
                ratios = [f"{c.mb / f.mb:.3f}", f"{c.rounds / f.rounds:.3f}", f"{c.lan_s / f.lan_s:.3f}",
                          f"{c.compute_s / f.compute_s:.3f}"]
            lines.append(f"| {stem} | {r['length']} | `{r['policy']}` | {c.mb:.1f} | {c.rounds:,.0f} | "
                         f"{c.lan_s:.2f} | {c.compute_s:.2f} | " + " | ".join(ratios)
                         + f" | {_needle(scores, r['policy'], float(r['budget']))} |")
    return lines


def _find(files: dict[str, list[dict]], stem: str, policy: str) -> dict | None:
    return next((r for r in files.get(stem, []) if r.get("kind") == "mpc" and r["policy"] == policy), None)


def options_table(files: dict[str, list[dict]], scores: dict) -> list[str]:
    lines = ["| idea | off -> on | MB | rounds | compute s | needle L=2000 @ 10 % |",
             "|---|---|---|---|---|---|"]
    for idea, (s0, p0), (s1, p1) in OPTIONS:
        a, b = _find(files, s0, p0), _find(files, s1, p1)
        if a is None or b is None:
            continue
        ca, cb = Cost.of(a), Cost.of(b)
        lines.append(f"| {idea} | `{p0}` -> `{p1}` | {ca.mb:.1f} -> {cb.mb:.1f} | {ca.rounds:,.0f} -> "
                     f"{cb.rounds:,.0f} | {ca.compute_s:.1f} -> {cb.compute_s:.1f} | "
                     f"{_needle(scores, p0, 0.1)} -> {_needle(scores, p1, 0.1)} |")
    return lines


def needle_table(scores: dict) -> list[str]:
    lines = ["| policy | budget | L | samples | needle accuracy |", "|---|---|---|---|---|"]
    for (policy, budget, length), r in sorted(scores.items()):
        lines.append(f"| `{policy}` | {budget:g} | {length} | {r['samples']} | {r['accuracy']:.3f} |")
    return lines


def render(files: dict[str, list[dict]]) -> str:
    scores = needle_scores(files)
    parts = [
        "# MPC cost and accuracy of the KV-cache policies",
        "",
        "Generated by `python -m mpcache.eval.mpc_results` from `docs/records/mpc_policies*.jsonl`; do not "
        "edit by hand. Costs are per decode token (SmolLM2-135M, two parties, TFP dealer, default "
        "approximations, `--prefill plaintext`, budget 10 %), compared with the full cache of the same "
        "run. Bytes and rounds are exact counts; compute seconds come from a loaded two-core machine "
        "and are comparable only within one run. Needle accuracy is plaintext with the same "
        "approximations (`mpcache eval needle --approx fast`), samples in brackets.",
        "",
        "## Per decode token", "", *cost_table(files, scores), "",
        "## Options, one idea at a time", "", *options_table(files, scores), "",
        "## Needle in a haystack (plaintext, MPC approximations)", "", *needle_table(scores), "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpcache.eval.mpc_results",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(load(args.records)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
