"""``mpcache bench mpc``: private (two-party) generation costs, one JSON record per setting.
``mpcache bench topk``: the oblivious top-k constructions side by side (bytes, rounds, seconds).

Launches the parties itself with ``torch.distributed.run`` unless it already runs under torchrun.
"""

from __future__ import annotations

import argparse
import sys

from mpcache.core.approximations import MPC_DEFAULT, MPC_DEFAULT_TTP, PRESETS, Approximations, mpc_default
from mpcache.core.errors import UserError
from mpcache.generation.generate import check_lengths
from mpcache.models import DEFAULT_MODEL, load_model
from mpcache.policies import check_supported, parse_spec
from mpcache.programs.commands import bench_ops
from mpcache.programs.parties import bench_party, topk_bench
from mpcache.programs.parties.bench_party import ensure_parent
from protocols.net import links, runtime
from protocols.net.launch import launch_local
from protocols.numerics.topk import METHODS


def _lengths(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--length takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("--length values must be >= 1")
    return values


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (JSON records)")
    bench = p.add_subparsers(dest="bench", required=True)
    m = bench.add_parser("mpc", help="two-party private generation: bytes, rounds, seconds per token")
    m.add_argument("--policy", default="full",
                   help="comma list of KV-cache policies NAME[:KEY=VALUE...] (full: the baseline); one "
                        "record each, same run, same prompt")
    m.add_argument("--budget", type=float, default=0.1,
                   help="fraction of the prompt attended per step, for every policy but full")
    m.add_argument("--prefill", choices=["mpc", "plaintext"], default="mpc",
                   help="plaintext: a COST BENCHMARK, not a private run (the prompt's KV cache is "
                        "computed in plaintext and secret-shared; the static stage and decode run in 2PC)")
    m.add_argument("--model", default=DEFAULT_MODEL, help="smollm2 | PATH | random:PRESET")
    m.add_argument("--length", type=_lengths, default=[128], help="prompt length(s), e.g. 128,512")
    m.add_argument("--new-tokens", type=int, default=3, help="generated tokens (>= 2: prefill + decode)")
    m.add_argument("--dealer", choices=["tfp", "ttp"], default="tfp")
    m.add_argument("--mask-reuse", choices=["on", "off", "both"], default="on",
                   help="both: one record with and one without mask reuse")
    m.add_argument("--no-mask-reuse", dest="mask_reuse", action="store_const", const="off")
    m.add_argument("--timeout", type=float, default=600, help="seconds a party waits for the other")
    m.add_argument("--approx", default=None,
                   help=f"approximation preset(s), comma list (v1, fast, fast-lite, fast-lite3): one record "
                   f"each, same run (default {MPC_DEFAULT}; {MPC_DEFAULT_TTP} with --dealer ttp)")
    m.add_argument("--json", required=True, help="file to append the records to")
    links.add_flags(m, bench=True)
    m.set_defaults(run=run)

    bench_ops.add_parser(bench)

    t = bench.add_parser("topk", help="oblivious top-k constructions under 2PC: bytes, rounds, seconds")
    t.add_argument("--sizes", type=_ints, default=[16, 64, 256, 2048], help="n, e.g. 16,64,256,2048")
    t.add_argument("--k", type=_ints, default=None,
                   help="k values (default: n/2, n/5, 8 and, for n >= 1024, the static stage's 0.1 n)")
    t.add_argument("--methods", type=_methods, default=None, help="comma list (default: all)")
    t.add_argument("--bisect-radix", type=_ints, default=[1, 2],
                   help="bits found per bisection step, one record each (default 1,2)")
    t.add_argument("--heads", type=int, default=1, help="rows H of the scores [H, n]")
    t.add_argument("--max-bytes", type=float, default=1e9, help="skip a construction estimated above this")
    t.add_argument("--max-rounds", type=int, default=10000, help="skip a construction estimated above this")
    t.add_argument("--dealer", choices=["tfp", "ttp"], default="tfp")
    t.add_argument("--approx", default=MPC_DEFAULT, choices=sorted(PRESETS),
                   help="approximation preset: fast compares with the dealer's exact ring comparison")
    t.add_argument("--timeout", type=float, default=600, help="seconds a party waits for the other")
    t.add_argument("--json", required=True, help="file to append the records to")
    t.set_defaults(run=run_topk)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def _methods(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in METHODS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--methods takes a comma list of {', '.join(METHODS)}")
    return names


def run_topk(args: argparse.Namespace) -> int:
    if args.heads < 1:
        raise UserError("--heads must be >= 1")
    if not runtime.under_torchrun():
        return launch_local(["-m", "mpcache", *sys.argv[1:]], runtime.world_size(args.dealer))

    ensure_parent(args.json)
    return runtime.run_party(lambda: topk_bench.run(runtime.init(args.dealer, args.timeout), args))


def _apply_link_flags(args: argparse.Namespace) -> None:
    try:
        links.apply_flags(args)
    except RuntimeError as exc:  # a bad key or fingerprint: one line, before any launch
        raise UserError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    if args.new_tokens < 2:
        raise UserError("--new-tokens must be at least 2 (the first token comes from the prefill)")
    _apply_link_flags(args)

    args.approx = args.approx or mpc_default(args.dealer)
    args.approx_presets = [a.strip() for a in args.approx.split(",") if a.strip()]
    for name in args.approx_presets:
        if name == "exact" or Approximations.preset(name).exact:
            raise UserError("--approx: MPC needs an approximation preset (v1, fast)")

    args.policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    if not args.policies:
        raise UserError("--policy needs at least one policy")
    for spec in args.policies:
        check_supported(spec, "mpc")  # a plaintext-only policy: one line, before any launch
        parse_spec(spec, args.budget)  # bad name/option/budget -> UserError before any launch
    if not runtime.under_torchrun():
        config = load_model(args.model, with_tokenizer=False).config  # bad model -> UserError, no launch
        for length in args.length:
            check_lengths(length, args.new_tokens, config.max_positions)

        return launch_local(["-m", "mpcache", *sys.argv[1:]], runtime.world_size(args.dealer))

    ensure_parent(args.json)

    def body() -> int:
        party = runtime.init(args.dealer, args.timeout)
        return bench_party.run(party, args)

    return runtime.run_party(body)
