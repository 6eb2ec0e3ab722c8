"""``mpcache table FILE...``: one markdown table of every policy over several records files.

Columns: needle accuracy at each length and budget, perplexity at each budget, ``kv_bytes`` at one
budget, extra parameters and training seconds (``mpcache.eval.summary``). Cells say how many
samples they hold; unmeasured cells say "–".
"""

from __future__ import annotations

import argparse

from mpcache.core.errors import UserError
from mpcache.eval.plot import load_records
from mpcache.eval.summary import SummarySpec, summary_table


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="one markdown table of all policies from several eval records files")
    p.add_argument("files", nargs="+", help="JSON-lines records from `mpcache eval` (chunks are merged)")
    p.add_argument("--alias", action="append", default=[], metavar="SPEC=>LABEL",
                   help="show the records of policy SPEC in row LABEL (repeatable)")
    p.add_argument("--rows", help="comma-separated row labels, in order (default: as found)")
    p.add_argument("--budgets", type=_floats, default=(0.05, 0.1, 0.2))
    p.add_argument("--needle-lengths", type=_ints, default=(2000, 4000))
    p.add_argument("--ppl-length", type=int, default=2000)
    p.add_argument("--kv-budget", type=float, default=0.1)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    aliases = {}
    for item in args.alias:
        spec, sep, label = item.partition("=>")
        if not sep or not spec or not label:
            raise UserError(f"--alias wants SPEC=>LABEL, got {item!r}")
        aliases[spec] = label
    records = [r for path in args.files for r in load_records(path) if "task" in r]
    if not records:
        raise UserError("no eval records in " + ", ".join(args.files))
    spec = SummarySpec(needle_lengths=args.needle_lengths, ppl_length=args.ppl_length, budgets=args.budgets,
                       kv_budget=args.kv_budget, kv_length=args.ppl_length, aliases=aliases,
                       rows=tuple(args.rows.split(",")) if args.rows else ())
    print(summary_table(records, spec))
    return 0
