"""The ``mpcache`` command. Bad input prints one line on stderr and exits 2, without a traceback."""

from __future__ import annotations

import argparse
import sys

from mpcache.core.errors import UserError
from mpcache.programs.commands import bench, chat, generate, keys, plot, table, train
from mpcache.programs.commands import eval as eval_command

COMMANDS = [generate, eval_command, bench, chat, plot, table, train, keys]


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's help shows the defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        if args and args[0].startswith("-") and not kwargs.get("help"):
            kwargs["help"] = "(default: %(default)s)"  # argparse skips options without a help text
        return super().add_argument(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mpcache", description="Private LLM inference with MPC-friendly KV-cache eviction.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as exc:
        print(f"mpcache: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mpcache: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
