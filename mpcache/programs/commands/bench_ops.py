"""``mpcache bench ops``: private operators at SmolLM2's shapes, stock CrypTen vs our presets.

Records the inputs from the plaintext model first (once, cached), then launches the two parties.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mpcache.core.approximations import PRESETS
from mpcache.core.errors import UserError
from mpcache.models import DEFAULT_MODEL
from mpcache.programs.parties.ops_bench import OPS, record_inputs
from mpcache.programs.parties.ops_bench import run as run_party
from protocols.net import runtime
from protocols.net.launch import launch_local


def add_parser(bench: argparse._SubParsersAction) -> None:
    o = bench.add_parser("ops", help="each private operator: bytes, rounds, seconds, max error")
    o.add_argument("--model", default=DEFAULT_MODEL, help="model whose activations are the inputs")
    o.add_argument("--impl", default="crypten,v1,fast",
                   help="comma list: crypten (stock CrypTen) and approximation presets (v1, fast)")
    o.add_argument("--ops", default="softmax128,softmax2048,silu1536,rmsnorm576,argmax49152,compare1e5")
    o.add_argument("--dealer", choices=["tfp", "ttp"], default="tfp")
    o.add_argument("--inputs", help="recorded inputs (.pt); default: recorded once into the cache")
    o.add_argument("--timeout", type=float, default=600)
    o.add_argument("--json", required=True, help="file to append the records to")
    o.set_defaults(run=run)


def _default_inputs(model: str) -> str:
    cache = Path(os.environ.get("MPCACHE_CACHE", Path.home() / ".cache" / "mpcache"))
    return str(cache / f"ops_inputs_{model.replace('/', '_').replace(':', '_')}.pt")


def run(args: argparse.Namespace) -> int:
    for impl in args.impl.split(","):
        if impl.strip() and impl.strip() not in ("crypten", *PRESETS) or impl.strip() == "exact":
            raise UserError(f"--impl: unknown {impl!r} (crypten, v1, fast)")
    for op in args.ops.split(","):
        if op.strip() and op.strip() not in OPS:
            raise UserError(f"--ops: unknown {op!r} (choose from {', '.join(OPS)})")
    if not runtime.under_torchrun():
        if args.inputs is None:
            args.inputs = _default_inputs(args.model)
            if not Path(args.inputs).exists():
                print(f"[bench ops] recording inputs from plaintext {args.model} -> {args.inputs}",
                      file=sys.stderr, flush=True)
                record_inputs(args.model, args.inputs)
        elif not Path(args.inputs).exists():
            raise UserError(f"--inputs {args.inputs}: no such file")
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        argv = [a for a in sys.argv[1:]]
        if "--inputs" not in argv:
            argv += ["--inputs", args.inputs]
        return launch_local(["-m", "mpcache", *argv], runtime.world_size(args.dealer))


    def body() -> int:
        party = runtime.init(args.dealer, args.timeout)
        return run_party(party, args)

    return runtime.run_party(body)
