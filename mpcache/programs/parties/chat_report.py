"""Per-turn cost table of a chat's JSON records (``mpcache chat client --json FILE``).

``python -m mpcache.programs.parties.chat_report FILE``: one row per turn (party 0's counts: online traffic
between the parties, rounds, dealer traffic; the client's wall seconds) and each turn's ratio to
turn 1 per new token (prompt + answer), which shows whether later turns re-pay for the history.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(records: list[dict]) -> str:
    first = records[0]
    per1 = _per_token(first)
    rows = ["| turn | new tokens (prompt + answer) | cache after | online MB | rounds | dealer MB | "
            "seconds | est. WAN s | MB / token vs turn 1 | s / token vs turn 1 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        c, per = r["turn_cost"], _per_token(r)
        rows.append(
            f"| {r['turn']} | {r['prompt_tokens']} + {r['answer_tokens']} | {r['cache_tokens']} | "
            f"{c['online_bytes'] / 1e6:.1f} | {c['rounds']:,} | {c['dealer_bytes'] / 1e6:.1f} | "
            f"{r['seconds']:.1f} | {c['wan_s']:.1f} | {per[0] / per1[0]:.2f}x | {per[1] / per1[1]:.2f}x |")
    return "\n".join(rows)


def _per_token(r: dict) -> tuple[float, float]:
    n = r["prompt_tokens"] + r["answer_tokens"]
    return r["turn_cost"]["online_bytes"] / n, r["seconds"] / n


def main(argv: list[str] | None = None) -> int:
    path = (argv or sys.argv[1:] or [""])[0]
    if not Path(path).is_file():
        print(f"mpcache: error: no chat records at {path!r}", file=sys.stderr)
        return 2
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not records:
        print(f"mpcache: error: {path} holds no turns", file=sys.stderr)
        return 2
    r = records[0]
    print(f"{r['model']}, dealer {r['dealer']}, policy {r['policy']} (budget {r['budget']} tokens)")
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
