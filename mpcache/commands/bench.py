"""``mpcache bench mpc``: private (two-party) generation costs, one JSON record per setting.

Launches the parties itself with ``torch.distributed.run`` unless it already runs under torchrun.
"""

from __future__ import annotations

import argparse
import sys

from mpcache.errors import UserError
from mpcache.models import DEFAULT_MODEL


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
    m.add_argument("--policy", default="full", help="KV-cache policy (full: the baseline)")
    m.add_argument("--budget", type=float, default=1.0)
    m.add_argument("--model", default=DEFAULT_MODEL, help="smollm2 | PATH | random:PRESET")
    m.add_argument("--length", type=_lengths, default=[128], help="prompt length(s), e.g. 128,512")
    m.add_argument("--new-tokens", type=int, default=3, help="generated tokens (>= 2: prefill + decode)")
    m.add_argument("--dealer", choices=["tfp", "ttp"], default="tfp")
    m.add_argument("--mask-reuse", choices=["on", "off", "both"], default="on",
                   help="both: one record with and one without mask reuse")
    m.add_argument("--no-mask-reuse", dest="mask_reuse", action="store_const", const="off")
    m.add_argument("--timeout", type=float, default=600, help="seconds a party waits for the other")
    m.add_argument("--approx", default="v1",
                   help="approximation preset(s), comma list (v1, fast): one record each, same run")
    m.add_argument("--json", required=True, help="file to append the records to")
    m.set_defaults(run=run)
    from mpcache.commands import bench_ops

    bench_ops.add_parser(bench)


def run(args: argparse.Namespace) -> int:
    from protocols import runtime

    if args.new_tokens < 2:
        raise UserError("--new-tokens must be at least 2 (the first token comes from the prefill)")
    from mpcache.backend import Approximations

    args.approx_presets = [a.strip() for a in args.approx.split(",") if a.strip()]
    for name in args.approx_presets:
        if name == "exact" or Approximations.preset(name).exact:
            raise UserError("--approx: MPC needs an approximation preset (v1, fast)")
    if args.policy != "full" or args.budget != 1.0:
        raise UserError("under MPC only --policy full (budget 1.0) is implemented so far")
    if not runtime.under_torchrun():
        from mpcache.generate import check_lengths
        from mpcache.models import load_model
        from protocols.launch import launch_local

        config = load_model(args.model, with_tokenizer=False).config  # bad model -> UserError, no launch
        for length in args.length:
            check_lengths(length, args.new_tokens, config.max_positions)

        return launch_local(["-m", "mpcache", *sys.argv[1:]], runtime.world_size(args.dealer))

    from protocols.bench_party import ensure_parent
    from protocols.bench_party import run as run_party

    ensure_parent(args.json)

    def body() -> int:
        party = runtime.init(args.dealer, args.timeout)
        return run_party(party, args)

    return runtime.run_party(body)
