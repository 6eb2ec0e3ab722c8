"""``mpcache plot FILE --out PNG``: accuracy (or perplexity) vs budget per policy, a panel per length."""

from __future__ import annotations

import argparse

from mpcache.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot eval records (accuracy vs budget per policy)")
    p.add_argument("file", help="JSON-lines records written by mpcache eval --json")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--task", help="only records of this task (default: the first record's)")
    p.add_argument("--table", action="store_true", help="also print a markdown table of the records")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mpcache.eval.plot import load_records, merge_chunks, plot_records, table

    records = merge_chunks(load_records(args.file))
    task = args.task or records[0]["task"]
    chosen = [r for r in records if r.get("task") == task]
    if not chosen:
        raise UserError(f"no {task!r} records in {args.file}")
    plot_records(chosen, args.out)
    if args.table:
        print(table(chosen))
    print(f"wrote {args.out} ({len(chosen)} records)")
    return 0
