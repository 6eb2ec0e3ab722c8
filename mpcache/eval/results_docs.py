"""Write docs/results/*.md from the JSON records in docs/records/ (nothing is measured here).

    python -m mpcache.eval.results_docs [--records docs/records] [--out docs/results]
    make results

One function per document (``DOCUMENTS``); ``tests/test_results_docs.py`` renders them into a
temporary folder and checks that the committed documents equal the fresh ones.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from mpcache.eval import mpc_tradeoff
from mpcache.eval.results_docs_chat import chat_document
from mpcache.eval.results_docs_mpc import chat, mpc_cost, mpc_ops, mpc_policies, topk
from mpcache.eval.results_docs_plain import accuracy, compression, mpcache_options
from mpcache.eval.results_docs_seed import seed_policies
from mpcache.eval.results_docs_trunc import truncation

DOCUMENTS: dict[str, Callable[[Path], str]] = {
    "accuracy": accuracy,
    "mpcache_options": mpcache_options,
    "seed_policies": seed_policies,
    "compression": compression,
    "mpc_cost": mpc_cost,
    "mpc_ops": mpc_ops,
    "mpc_policies": mpc_policies,
    "topk": topk,
    "truncation": truncation,
    "chat": chat,
    "chat_document": chat_document,
    "mpc_tradeoff": lambda records: mpc_tradeoff.render(mpc_tradeoff.load(records)),
}
ROOT = Path(__file__).resolve().parents[2]


def render_all(records: Path) -> dict[str, str]:
    """File name -> markdown text of every document (one trailing newline each)."""
    return {f"{name}.md": make(records).rstrip("\n") + "\n" for name, make in DOCUMENTS.items()}


def write_all(records: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all(records).items():
        (out / name).write_text(text)
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=Path, default=ROOT / "docs/records")
    p.add_argument("--out", type=Path, default=ROOT / "docs/results")
    args = p.parse_args(argv)
    for path in write_all(args.records, args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
