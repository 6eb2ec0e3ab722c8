"""``mpcache plot FILE --out PNG``: draws what the records in FILE measured.

Eval records (``mpcache eval``): accuracy (or perplexity) vs budget per policy, a panel per length.
MPC bench records (``mpcache bench mpc``): bytes / rounds / time per generated token vs length.
"""

from __future__ import annotations

import argparse

from mpcache.core.errors import UserError
from mpcache.eval.plot import load_records, merge_chunks, plot_records, table
from mpcache.eval.plot_mpc import is_mpc_record, plot_mpc
from mpcache.eval.plot_ops import is_ops_record, plot_ops
from mpcache.programs.parties.ops_bench import table as ops_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot", help="plot eval records (accuracy vs budget) or MPC bench records (cost vs length)"
    )
    p.add_argument("file", nargs="?", help="JSON-lines records from `mpcache eval` or `mpcache bench mpc`")
    p.add_argument("--json", dest="json_file", help="same as FILE")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--task", help="eval records: only this task (default: the first record's)")
    p.add_argument("--table", action="store_true", help="eval records: also print a markdown table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = args.file or args.json_file
    if not path:
        raise UserError("plot needs a records FILE")
    records = load_records(path)
    ops = [r for r in records if is_ops_record(r)]
    if ops:
        plot_ops(ops, args.out)
        print(ops_table(ops))
        print(f"wrote {args.out} ({len(ops)} operator records)")
        return 0
    mpc = [r for r in records if is_mpc_record(r)]
    if mpc:
        plot_mpc(mpc, args.out)
        print(f"wrote {args.out} ({len(mpc)} MPC bench records)")
        return 0
    records = merge_chunks(records)
    task = args.task or records[0]["task"]
    chosen = [r for r in records if r.get("task") == task]
    if not chosen:
        raise UserError(f"no {task!r} records in {path}")
    plot_records(chosen, args.out)
    if args.table:
        print(table(chosen))
    print(f"wrote {args.out} ({len(chosen)} records)")
    return 0
