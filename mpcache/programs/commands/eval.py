"""``mpcache eval {needle,lines,ppl,decode}``: accuracy of KV-cache policies, as JSON-lines records."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from mpcache.core.approximations import Approximations
from mpcache.core.backend import PlainBackend
from mpcache.core.errors import UserError
from mpcache.eval import decode_heavy
from mpcache.eval.sweep import SweepConfig, run_sweep, write_records
from mpcache.learned import provenance
from mpcache.models import DEFAULT_MODEL, Transformer, load_model
from mpcache.policies import parse_spec
from mpcache.programs.commands.train import ensure_trained


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy of KV-cache policies (plaintext), JSON-lines records")
    p.add_argument("task", choices=["needle", "lines", "ppl", decode_heavy.TASK],
                   help="decode: a long continuation fed token by token under the budget, whose "
                        "--budget is a fraction of prefix (--length) + continuation (--decode-tokens)")
    p.add_argument("--policy", default="full",
                   help="comma list of NAME[:KEY=VALUE...], e.g. full,h2o,mpcache:static=false")
    p.add_argument("--budget", default="0.1", help="comma list of fractions of the prompt attended per step")
    p.add_argument("--length", default="2000", help="comma list of prompt lengths (tokens)")
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--first-sample", type=int, default=0,
                   help="index of the first sample (run a long sweep in chunks; plot merges them)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="smollm2 | PATH to HF folder | random:PRESET")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=32, help="needle/lines answer length cap")
    p.add_argument("--ppl-tokens", type=int, default=32, help="teacher-forced tokens scored (ppl)")
    p.add_argument("--decode-tokens", type=int, default=decode_heavy.DECODE_TOKENS,
                   help="decode task: continuation tokens fed one at a time and scored")
    p.add_argument("--json", required=True, help="file to append the records to")
    p.add_argument("--details", action="store_true", help="add per-sample results to each record")
    p.add_argument("--approx", default="exact",
                   help="numerics: exact, or an MPC approximation preset simulated in plaintext (v1, fast)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} must be a comma list of numbers, got {text!r}") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise UserError(f"{flag} values must be in (0, 1], got {text!r}")
    return values


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} must be a comma list of integers, got {text!r}") from None
    if not values or any(v < 16 for v in values):
        raise UserError(f"{flag} values must be at least 16 tokens, got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    if not policies:
        raise UserError("--policy is empty")
    budgets = _floats(args.budget, "--budget")
    for spec in policies:
        parse_spec(spec, budgets[0])
    lengths = _ints(args.length, "--length")
    if args.samples < 1:
        raise UserError(f"--samples must be at least 1, got {args.samples}")
    if args.first_sample < 0:
        raise UserError(f"--first-sample must be >= 0, got {args.first_sample}")
    if args.max_new_tokens < 1 or args.ppl_tokens < 1 or args.decode_tokens < 1:
        raise UserError("--max-new-tokens, --ppl-tokens and --decode-tokens must be at least 1")
    approx = Approximations.preset(args.approx)
    cfg = SweepConfig(args.task, policies, budgets, lengths, args.samples, args.seed, args.model,
                      args.max_new_tokens, args.ppl_tokens, args.details, args.first_sample,
                      args.decode_tokens)
    for length in lengths:  # the decode task's budget must be below its prefix
        for _, budget in cfg.runs():
            cfg.policy_budget(budget, length)
    model = load_model(args.model)
    longest = max(lengths) + max(args.max_new_tokens, cfg.scored_tokens + 1) + 64
    if longest > model.config.max_positions:
        raise UserError(f"--length {max(lengths)} plus the answer exceeds the model's "
                        f"{model.config.max_positions} positions")

    ensure_trained(policies, model, not args.no_progress)
    for spec in policies:  # what each trained scorer was trained on, as stored with its weights
        extras = parse_spec(spec, budgets[0]).record_extras(model.config)
        if "provenance" in extras:
            print(provenance.line(spec, extras["provenance"]))
    transformer = Transformer(model.config, model.weights, PlainBackend(approx))

    def write(batch):
        for rec in batch:
            rec["approx"] = args.approx
        write_records(args.json, batch)

    total = len(lengths) * args.samples * len(cfg.runs())
    with tqdm(total=total, desc=f"eval {args.task}", unit="run", disable=args.no_progress,
              file=sys.stderr) as bar:
        records = run_sweep(cfg, transformer, model.tokenizer, bar,
                            on_records=write)
    for rec in records:
        metric = f"ppl {rec['perplexity']}" if "perplexity" in rec else f"acc {rec['accuracy']:.3f}"
        held = f", held <= {rec['max_held_tokens']} (cap {rec['cap_tokens']})" if "cap_tokens" in rec else ""
        print(f"{rec['task']} L={rec['length']} {rec['policy']} B={rec['budget']}: {metric}, "
              f"attended {rec['mean_attended_tokens']}, new {rec['mean_new_tokens']}, "
              f"kv {rec['kv_bytes'] / 1e6:.1f} MB{held}")
    return 0
