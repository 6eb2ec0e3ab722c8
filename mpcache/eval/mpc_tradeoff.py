"""docs/results/mpc_tradeoff.md from the committed records docs/records/mpc_tradeoff_*.jsonl.

    python -m mpcache.eval.mpc_tradeoff [--records DIR] [--out FILE]

Records are the JSON lines of ``mpcache bench mpc --json`` (``kind: mpc``: per decode token, by
phase) and of ``mpcache eval needle|ppl --json`` (``task``). A policy is compared with the ``full``
record of its own run: the last one of the same file and prompt length written before it (same
machine, same load; a file may hold several runs), so byte and round ratios are exact and compute
ratios are as fair as the machine allows. The options
table compares two records named in ``OPTIONS`` (an idea off, then on).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from mpcache.eval.mpc_tradeoff_needle import DEFAULT as LEAN_HALF
from mpcache.eval.mpc_tradeoff_needle import bar_table as needle_bar_table
from mpcache.eval.mpc_tradeoff_needle import needle_table
from mpcache.eval.mpc_tradeoff_reading import READING

RECORDS = Path("docs/records")
OUT = Path("docs/results/mpc_tradeoff.md")
PATTERN = "mpc_tradeoff_*.jsonl"
# Needle records of the other policies and of the default (30 samples, exact numerics) kept by the
# plaintext accuracy documents: read for comparison.
ACCURACY = "plaintext_accuracy.jsonl"


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


# (idea, (file stem, policy) with the idea off, (file stem, policy) with it on). "before" is the bench
# before the bounded comparisons (same code otherwise), "bounded" after them, "2048" the final run.
RETRIEVAL = "mpcache:preset=retrieval"
FRONTIER = "mpc_tradeoff_frontier"  # the run after the level-by-level selections and the static units
STATIC_HALF = ":static=true:static_heads=kv:importance=sum:static_unit=32:static_spread=1:rho=0.5"
OPTIONS: list[tuple[str, tuple[str, str], tuple[str, str]]] = [
    ("argmax over the vocabulary, softmax shift, selection maxima: bounded comparisons, range checked "
     "(full cache)", ("mpc_tradeoff_before", "full"), ("mpc_tradeoff_bounded", "full")),
    ("the same (retrieval: token maxima over the whole cache)",
     ("mpc_tradeoff_before", RETRIEVAL + ":share_scores=false"),
     ("mpc_tradeoff_bounded", RETRIEVAL + ":share_scores=false")),
    ("level-1 parents scored by their summaries, token maxima only inside (r1 = 0.5, s2 = 8)",
     ("mpc_tradeoff_bounded", RETRIEVAL + ":share_scores=false"),
     ("mpc_tradeoff_bounded", RETRIEVAL + ":hierarchy=true:s2=8:share_scores=false")),
    ("... a quarter of the parents (r1 = 0.25)",
     ("mpc_tradeoff_bounded", RETRIEVAL + ":hierarchy=true:s2=8:share_scores=false"),
     ("mpc_tradeoff_bounded", RETRIEVAL + ":hierarchy=true:s2=8:r1=0.25:share_scores=false")),
    ("q.K^T computed once for selection and attention, maxnorm maxima as the softmax shift (the "
     "default, retrieval; L = 1024)", ("mpc_tradeoff_1024", "mpcache:share_scores=false"),
     ("mpc_tradeoff_1024", "mpcache")),
    ("level-1 parents by the group-summed query's best token, per-head token maxima only in a quarter "
     "of them (preset lean) instead of over the whole cache (L = 1024)", ("mpc_tradeoff_1024", "mpcache"),
     ("mpc_tradeoff_1024", "mpcache:preset=lean")),
    ("q.K^T computed once for selection and attention, maxnorm maxima as the softmax shift (the "
     "default, retrieval; L = 2048)", ("mpc_tradeoff_2048", "mpcache:share_scores=false"),
     ("mpc_tradeoff_2048", "mpcache")),
    ("level-1 parents by the group-summed query's best token, per-head token maxima only in a quarter "
     "of them (preset lean) instead of over the whole cache (L = 2048)", ("mpc_tradeoff_2048", "mpcache"),
     ("mpc_tradeoff_2048", "mpcache:preset=lean")),
    ("two-level selections applied level by level, no composed one-hot (lean; two runs)",
     ("mpc_tradeoff_2048", "mpcache:preset=lean"), ("mpc_tradeoff_frontier2", "mpcache:preset=lean")),
    ("the same (retrieval's top-k through parents; two runs)",
     ("mpc_tradeoff_2048", "mpcache"), ("mpc_tradeoff_frontier2", RETRIEVAL)),
    ("the default half instead of retrieval (two runs; half also with the level-by-level selections)",
     ("mpc_tradeoff_2048", "mpcache"), (FRONTIER, LEAN_HALF)),
    ("half (exact maxima in half of the parents) instead of lean's quarter (two runs; half also with "
     "the level-by-level selections)", ("mpc_tradeoff_2048", "mpcache:preset=lean"), (FRONTIER, LEAN_HALF)),
    ("static stage keeping 50 % of the prompt in runs of 32 tokens with their neighbours (lean, half the "
     "parents)",
     (FRONTIER, LEAN_HALF), (FRONTIER, LEAN_HALF + STATIC_HALF)),
]
ATTENTION = ("softmax", "selection", "attn-scores", "attn-values")
# The bar per decode token at 2048 tokens against full in the same run: (name, limit on the ratio).
BAR = (("bytes", 0.25), ("rounds", 1.10), ("est. LAN", 1 / 2.5), ("LAN network", 1 / 2.5), ("compute", 0.5))
FINALS = (FRONTIER, FRONTIER + "2", "mpc_tradeoff_4096", "mpc_tradeoff_2048", "mpc_tradeoff_1024")
BYTES_AT_4096 = 1 / 6  # the bar's bytes limit at 4096 tokens (1/4 at 2048)
# The bare name ran the default, `half`, from this time on (its accuracy records carry LEAN_HALF); before,
# it ran `retrieval` (the accuracy records of the bare name).
HALF_SINCE = "2026-12-06T11:22"


def _full(bench: list[dict], r: dict) -> dict | None:
    """The full cache's record of r's run: the last one at r's length written before r."""
    fulls = [f for f in bench if f["policy"] == "full" and f["length"] == r["length"]
             and f.get("time", "") <= r.get("time", "")]
    return fulls[-1] if fulls else None


def _named(r: dict) -> tuple[str, str]:
    """(the policy as shown, the name its accuracy records carry) of a bench record."""
    parts = r["policy"].split(":")
    if parts[0] != "mpcache" or any(p.startswith("preset=") for p in parts) or r.get("time", "") < HALF_SINCE:
        return f"`{r['policy']}`", r["policy"]
    return f"`{r['policy']}` (`half`)", ":".join([LEAN_HALF, *parts[1:]])


def load(records: Path) -> dict[str, list[dict]]:
    """Records by file stem."""
    out: dict[str, list[dict]] = {}
    for path in sorted(records.glob(PATTERN)) + sorted(records.glob(ACCURACY)):
        out[path.stem] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def accuracy_key(policy: str) -> str:
    """The policy as far as accuracy goes: ``share_scores`` changes no selection (same plaintext)."""
    return ":".join(p for p in policy.split(":") if not p.startswith("share_scores="))


def needle_scores(files: dict[str, list[dict]]) -> dict[tuple[str, float, int, str], dict]:
    """(policy, budget, length, approx) -> the needle record with the most samples, chunks of one
    sweep (``--first-sample``: disjoint samples, same seed) merged into one."""
    chunks: dict[tuple[str, float, int, str], dict[tuple[int, int], dict]] = {}
    for records in files.values():
        for r in records:
            if r.get("task") != "needle":
                continue
            key = (accuracy_key(r["policy"]), float(r["budget"]), int(r["length"]), r.get("approx", "exact"))
            chunk = (r.get("seed", 0), r.get("first_sample", 0))
            old = chunks.setdefault(key, {}).get(chunk)
            if old is None or r["samples"] > old["samples"]:
                chunks[key][chunk] = r
    best = {}
    for key, parts in chunks.items():
        by_seed: dict[int, list[dict]] = {}
        for (seed, _), r in sorted(parts.items()):
            by_seed.setdefault(seed, []).append(r)
        merged = []
        for rs in by_seed.values():
            n = sum(r["samples"] for r in rs)
            correct = sum(r["accuracy"] * r["samples"] for r in rs)
            merged.append({**rs[0], "samples": n, "accuracy": correct / n})
        best[key] = max(merged, key=lambda r: r["samples"])
    return best


def _needle(scores: dict, policy: str, budget: float, length: int = 2000) -> str:
    """Accuracy (samples) with the MPC numerics simulated, else (or with more samples) exact numerics."""
    key = accuracy_key(policy)
    r = scores.get((key, budget, length, "fast"))
    if r is None and key.startswith(RETRIEVAL):
        key = "mpcache" + key[len(RETRIEVAL):]  # the accuracy records name the old default by its bare name
        r = scores.get((key, budget, length, "fast"))
    exact = scores.get((key, budget, length, "exact"))
    if exact is not None and (r is None or exact["samples"] > r["samples"]):
        return f"{exact['accuracy']:.3f} ({exact['samples']}, exact numerics)"
    return f"{r['accuracy']:.3f} ({r['samples']})" if r else "-"


def cost_table(files: dict[str, list[dict]], scores: dict) -> list[str]:
    lines = ["| run | L | policy | MB | rounds | est. LAN s | compute s | bytes / full | rounds / full "
             "| LAN / full | compute / full | needle L=2000 (samples) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for stem, records in files.items():
        bench = [r for r in records if r.get("kind") == "mpc"]
        for r in bench:
            full, (shown, name) = _full(bench, r), _named(r)
            c = Cost.of(r)
            ratios = ["-"] * 4
            if full is not None:
                f = Cost.of(full)
                ratios = [f"{c.mb / f.mb:.3f}", f"{c.rounds / f.rounds:.3f}", f"{c.lan_s / f.lan_s:.3f}",
                          f"{c.compute_s / f.compute_s:.3f}"]
            lines.append(f"| {stem} | {r['length']} | {shown} | {c.mb:.1f} | {c.rounds:,.0f} | "
                         f"{c.lan_s:.2f} | {c.compute_s:.2f} | " + " | ".join(ratios)
                         + f" | {_needle(scores, name, float(r['budget']))} |")
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


def _static_rule(policy: str) -> tuple[str, float] | None:
    """(the rule: the spec without its keep ratio, rho) of a static-stage spec (``static=true`` and
    ``rho=``), else None."""
    parts = policy.split(":")
    if "static=true" not in parts:
        return None
    rho = [p for p in parts if p.startswith("rho=")]
    if len(rho) != 1:
        return None
    return ":".join(p for p in parts if not p.startswith("rho=")), float(rho[0][4:])


def static_table(scores: dict, budget: float = 0.1, length: int = 2000) -> list[str]:
    """Needle accuracy (samples) and the kept secret cache after the static stage (``kv_bytes``)
    against the kept fraction of the prompt, one row per static rule (MPC numerics, ``fast``); the
    100 % column is the same spec without the static stage."""
    rules: dict[str, dict[float, dict]] = {}
    for (policy, b, n, approx), r in scores.items():
        rule = _static_rule(policy)
        if rule is not None and b == budget and n == length and approx == "fast":
            rules.setdefault(rule[0], {})[rule[1]] = r
    ratios = sorted({rho for row in rules.values() for rho in row} | {1.0})
    head = " | ".join(f"keep {rho:.0%}" for rho in ratios)
    lines = [f"| static rule | {head} |", "|---|" + "---|" * len(ratios)]
    for rule, row in sorted(rules.items()):
        base = ":".join(p for p in rule.split(":") if p != "static=true" and not p.startswith("static_")
                        and not p.startswith("importance="))
        if base == "mpcache:preset=retrieval":
            base = "mpcache"
        row = {**row, 1.0: row.get(1.0) or scores.get((base, budget, length, "fast"))}
        cells = [f"{r['accuracy']:.3f} ({r['samples']}), {r['kv_bytes'] / 1e6:.1f} MB" if r else "-"
                 for r in (row.get(rho) for rho in ratios)]
        lines.append(f"| `{rule}` | " + " | ".join(cells) + " |")
    return lines


def ppl_lines(files: dict[str, list[dict]]) -> list[str]:
    """Perplexity records of the trade-off files, each against ``full`` of the same file, length and
    numerics."""
    lines = []
    for stem, records in files.items():
        ppl = [r for r in records if r.get("task") == "ppl"]
        for r in ppl:
            full = next((f for f in ppl if f["policy"] == "full" and f["length"] == r["length"]
                         and f.get("approx") == r.get("approx") and f["samples"] == r["samples"]), None)
            ratio = r["perplexity"] / full["perplexity"] - 1 if full and r is not full else None
            vs = "" if ratio is None else f", {ratio:+.1%} vs full"
            lines.append(f"- {stem}: `{r['policy']}` at {r['budget']:g}, L = {r['length']}, "
                         f"{r.get('approx', 'exact')} numerics, {r['samples']} samples: perplexity "
                         f"{r['perplexity']:.2f}{vs}.")
    return lines


def floor_lines(files: dict[str, list[dict]]) -> list[str]:
    """Per run: the bytes outside attention (embedding, norms, MLP, argmax...), the same for every
    policy, as a fraction of the full cache's: no policy can go below it."""
    lines = []
    for stem, records in files.items():
        for r in records:
            if r.get("kind") == "mpc" and r["policy"] == "full":
                total = Cost.of(r).mb
                outside = sum(p["online_bytes"] for k, p in r["phases"].items() if k not in ATTENTION) / 1e6
                lines.append(f"- {stem}, L = {r['length']}: full {total:.1f} MB per token, of which "
                             f"{outside:.1f} MB ({outside / total:.1%}) outside attention.")
    return lines


def bar_table(files: dict[str, list[dict]], scores: dict) -> list[str]:
    """Each MPCache configuration of the final runs against the bar (ratios to full, same file)."""
    head = " | ".join(f"{name} / full (<= {limit:.2f})" for name, limit in BAR)  # bytes: 1/6 at 4096
    lines = [f"| run | L | policy | {head} | needle L=2000 @ 10 % (>= 0.93) |",
             "|---|---|---|" + "---|" * (len(BAR) + 1)]
    for stem in FINALS:
        bench = [r for r in files.get(stem, []) if r.get("kind") == "mpc"]
        for r in bench:
            full, (shown, name) = _full(bench, r), _named(r)
            if full is None or r["policy"] == "full":
                continue
            c, f = Cost.of(r), Cost.of(full)
            ratios = (c.mb / f.mb, c.rounds / f.rounds, c.lan_s / f.lan_s,
                      (c.lan_s - c.compute_s) / (f.lan_s - f.compute_s), c.compute_s / f.compute_s)
            limits = [BYTES_AT_4096 if name == "bytes" and r["length"] >= 4096 else limit
                      for name, limit in BAR]
            cells = [f"{x:.3f} {'met' if x <= limit else 'NOT met'}"
                     for x, limit in zip(ratios, limits, strict=True)]
            row = [stem, str(r["length"]), shown, *cells, _needle(scores, name, 0.1)]
            lines.append("| " + " | ".join(row) + " |")
    return lines


NEEDLE_BAR = ("Plaintext, 30 samples where complete (samples in brackets), seed 0; the default with the MPC "
              "approximations (`fast`), the other policies with exact numerics (`mpcache` there is the "
              "default before, `retrieval`); full attends the whole prompt in every column.")


def render(files: dict[str, list[dict]]) -> str:
    scores = needle_scores(files)
    parts = [
        "# MPC cost and accuracy of the KV-cache policies",
        "",
        "Generated by `python -m mpcache.eval.mpc_tradeoff` from `docs/records/mpc_tradeoff_*.jsonl`; do not "
        "edit by hand. Costs are per decode token (SmolLM2-135M, two parties, TFP dealer, default "
        "approximations, `--prefill plaintext`, budget 10 %), compared with the full cache of the same "
        "file. Each file is one code state: `before` and `bounded` are single runs of several "
        "policies; the final files (`1024`, `2048`) ran one policy per invocation, back to back, "
        "because two SmolLM2 parties holding several policies' state were killed for memory on the "
        "shared machine; `frontier` ran full, `half` and `half` with the static stage in one invocation "
        "(stopped for memory), `frontier2` full, `lean`, `retrieval` (same code); `4096` holds two runs "
        "(full, then `lean`; later full and the default in one invocation), each policy against the "
        "full record before it. Bytes and rounds are "
        "exact counts and do not depend on the machine; compute "
        "seconds come from a two-core machine loaded by other jobs and compare only roughly. Needle "
        "accuracy is plaintext with the same approximations (`mpcache eval needle --approx fast`) "
        "where marked `fast`, else exact numerics; samples in brackets.",
        "",
        "Commands: `mpcache bench mpc --prefill plaintext --length L --new-tokens 2 --policy P "
        "--json FILE` (SmolLM2, TFP, `fast` by default); `mpcache eval needle --policy P --budget 0.1 "
        "--length 2000 --samples N [--first-sample S] --approx fast --json FILE`.",
        "",
        "## What changed, and what it means", "", *READING, "",
        "## Against the bar (final code; each policy against full in the same file)", "",
        "\"LAN network\" is the LAN estimate without compute (bytes / 1 Gbit/s + rounds x 0.5 ms): "
        "compute seconds on this loaded machine (every party's process shares 2 cores with other "
        "jobs) dominate the estimate and are not a property of the protocol.", "",
        *bar_table(files, scores), "",
        "## Per decode token, every run", "", *cost_table(files, scores), "",
        "## Outside attention: the floor of every policy", "", *floor_lines(files), "",
        "## Options, one idea at a time", "", *options_table(files, scores), "",
        "## Perplexity (plaintext, MPC approximations)", "", *ppl_lines(files), "",
        "## The static stage: needle against the kept fraction of the prompt", "",
        "Needle L = 2000, budget 10 % (the dynamic selection attends 10 % of the prompt among the kept "
        "tokens), plaintext with the MPC approximations; each cell: accuracy (samples), the secret "
        "cache kept after the stage (`kv_bytes`). `static_heads=kv`: one kept set per KV head (the max "
        "over its query heads), else one per layer (head mean); `importance=sum`: the window's "
        "attention summed, else its max; `static_unit=32`: runs of 32 tokens kept whole, each by its "
        "best token. 100 %: no static stage.", "",
        *static_table(scores), "",
        "## The default against the needle bar", "", NEEDLE_BAR, "", *needle_bar_table(files, scores), "",
        "## Needle in a haystack (plaintext, MPC approximations)", "", *needle_table(scores), "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpcache.eval.mpc_tradeoff",
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
