"""Per-turn cost table of a chat's JSON records (``mpcache chat client --json FILE``).

``python -m mpcache.programs.parties.chat_report FILE... [--answers]``: per file, one row per turn
(party 0's counts: online traffic between the parties, rounds, dealer traffic; the client's wall
seconds, its time to the first answer token and per answer token after it; the secret cache after
the turn and whether the policy's stage ran) and each turn's ratio to turn 1 per new token
(prompt + answer), which shows whether later turns re-pay for the history. ``--answers`` decodes
each turn's answer with the model's tokenizer (the client's own records: its text is its own).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mpcache.models import load_model


def table(records: list[dict]) -> str:
    first = records[0]
    per1 = _per_token(first)
    rows = ["| turn | new tokens (prompt + answer) | stage | cache after | online MB | rounds | dealer MB | "
            "seconds | first token s | s / answer token | est. WAN s | MB / token vs turn 1 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        c, per = r["turn_cost"], _per_token(r)
        rows.append(
            f"| {r['turn']} | {r['prompt_tokens']} + {r['answer_tokens']} | "
            f"{'yes' if r.get('staged') else 'no'} | "
            f"{r['cache_tokens']} of {r['position']} | {c['online_bytes'] / 1e6:.1f} | {c['rounds']:,} | "
            f"{c['dealer_bytes'] / 1e6:.1f} | {r['seconds']:.1f} | {r.get('first_token_s', 0.0):.1f} | "
            f"{r.get('per_token_s', 0.0):.2f} | {c['wan_s']:.1f} | {per / per1:.2f}x |")
    return "\n".join(rows)


def _per_token(r: dict) -> float:
    return r["turn_cost"]["online_bytes"] / (r["prompt_tokens"] + r["answer_tokens"])


def profile(records: list[dict], top: int = 6) -> str:
    """Where each turn's prefill traffic went (the client's per-phase counts), largest first."""
    lines = []
    for r in records:
        phases = r.get("prefill_phases") or {}
        total = sum(v["online_bytes"] for v in phases.values())
        if not total:
            continue
        ranked = sorted(phases.items(), key=lambda kv: -kv[1]["online_bytes"])[:top]
        parts = ", ".join(f"{k} {v['online_bytes'] / 1e6:,.0f} MB ({100 * v['online_bytes'] / total:.0f}%)"
                          for k, v in ranked)
        per = total / 1e6 / r["prompt_tokens"]
        lines.append(f"- turn {r['turn']} prefill, {per:.1f} MB per prompt token: {parts}")
    return "\n".join(lines)


def answers(records: list[dict]) -> str:
    tok = load_model(records[0]["model"]).tokenizer
    lines = []
    for r in records:
        ids = [t for t in r["answer_ids"] if t not in tok.eos_token_ids]
        lines.append(f"- turn {r['turn']}: {tok.decode(ids)!r}")
    return "\n".join(lines)


def report(path: Path, with_answers: bool) -> str:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path} holds no turns")
    r = records[0]
    head = (f"{r['model']}, dealer {r['dealer']}, approx {r['approx']}, policy {r['policy']} (budget "
            f"{r['budget']}, stage from {r.get('stage_tokens', '-')} tokens)")
    parts = [head, table(records)]
    if profile(records):
        parts.append(profile(records))
    if with_answers:
        parts.append(answers(records))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with_answers = "--answers" in argv
    paths = [Path(a) for a in argv if a != "--answers"]
    if not paths:
        print("usage: python -m mpcache.programs.parties.chat_report FILE... [--answers]", file=sys.stderr)
        return 2
    for path in paths:
        if not path.is_file():
            print(f"mpcache: error: no chat records at {str(path)!r}", file=sys.stderr)
            return 2
        try:
            print(report(path, with_answers) + "\n")
        except ValueError as exc:
            print(f"mpcache: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
