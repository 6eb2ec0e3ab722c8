"""Accuracy of the plaintext KV-compression policies (MiKV, KVCrush) against eviction baselines.

Runs the configurations of the MiKV/KVCrush comparison -- full; H2O and SnapKV eviction at 20 %;
MiKV at 20 % high precision with the rest int4 or int2; KVCrush and SnapKV at 25 % and 50 % --
on the needle and line-retrieval tasks, one sample at a time (each sample is prefilled once and
decoded by every configuration), appending one JSON record per (sample, configuration) so a run
can stop at any point and still be summarised. Summarise with ``--summarize FILE``.

    python examples/compression_accuracy.py --samples 30 --json results/compression_L2000.jsonl
    python examples/compression_accuracy.py --summarize results/compression_L2000.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

RUNS = [  # (policy spec, budget)
    ("full", 1.0),
    ("h2o", 0.2), ("snapkv", 0.2), ("mikv", 0.2), ("mikv:bits=2", 0.2), ("kvcrush+mikv", 0.2),
    ("kvcrush", 0.25), ("snapkv", 0.25),
    ("kvcrush", 0.5), ("snapkv", 0.5),
]


def run(args: argparse.Namespace) -> None:
    from mpcache.core.backend import PlainBackend
    from mpcache.eval.sweep import SweepConfig, run_sweep, write_records
    from mpcache.models import Transformer, load_model

    class Config(SweepConfig):
        def runs(self):
            return [(spec, budget) for spec, budget in RUNS if spec in self.policies]

    model = load_model(args.model)
    transformer = Transformer(model.config, model.weights, PlainBackend())
    specs = sorted({spec for spec, _ in RUNS})
    for index in range(args.first_sample, args.first_sample + args.samples):
        for task in args.tasks.split(","):
            cfg = Config(task, specs, [0.2], [args.length], 1, args.seed, args.model, args.max_new_tokens,
                         details=True, first_sample=index)
            records = run_sweep(cfg, transformer, model.tokenizer)
            write_records(args.json, records)
            done = ", ".join(f"{r['policy']}@{r['budget']}={r['accuracy']:.0f}" for r in records)
            print(f"{task} sample {index}: {done}", file=sys.stderr, flush=True)


def summarize(path: str) -> None:
    stats: dict[tuple, dict] = defaultdict(lambda: defaultdict(float))
    for line in open(path):
        r = json.loads(line)
        s = stats[(r["task"], r["policy"], r["budget"])]
        s["n"] += r["samples"]
        s["correct"] += r["accuracy"] * r["samples"]
        s["kv_bytes"] += r["kv_bytes"] * r["samples"]
        s["new"] += r["mean_new_tokens"] * r["samples"]
        s["attended"] += r["mean_attended_tokens"] * r["samples"]
        s["length"] = r["length"]
    order = {run: i for i, run in enumerate(RUNS)}
    print("| task | policy | budget | samples | accuracy | kv_bytes (MB) | attended keys | new tokens |")
    print("|---|---|---|---|---|---|---|---|")
    rows = sorted(stats.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1:], 99)))
    for (task, policy, budget), s in rows:
        n = s["n"]
        print(f"| {task} | {policy} | {budget:g} | {n:.0f} | {s['correct'] / n:.2f} | "
              f"{s['kv_bytes'] / n / 1e6:.2f} | {s['attended'] / n:.0f} | {s['new'] / n:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--json", help="append per-sample records here")
    p.add_argument("--summarize", metavar="FILE", help="print a markdown table of FILE's records and exit")
    p.add_argument("--tasks", default="lines,needle")
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--first-sample", type=int, default=0)
    p.add_argument("--length", type=int, default=2000)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="smollm2")
    args = p.parse_args()
    if args.summarize:
        summarize(args.summarize)
    elif not args.json:
        p.error("--json is required to run")
    else:
        run(args)


if __name__ == "__main__":
    main()
