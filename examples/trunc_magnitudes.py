"""Magnitude of every value at every truncation site of a private SmolLM2 run (issue #24).

An ANALYSIS mode: both parties open the input of every truncation (``protocols.ring.trunc.record``; it
reveals intermediate values, never use it on private data) along a real two-party run (prefill +
decode). Per site (``module.function:line``, the backend phase, prefill or decode): the number of
elements, max |x| (ring units) and the expected number of catastrophic LOCAL truncations,
sum |x| / 2^64 (a share split uniformly at random straddles the wrap with probability |x| / 2^64;
``tests/test_truncation.py`` checks that rate). Writes a JSON record and renders the markdown table.

    python examples/trunc_magnitudes.py --json docs/records/truncation_magnitudes.json
    python examples/trunc_magnitudes.py --render docs/records/truncation_magnitudes.json \
        --md docs/results/truncation.md
(it starts the two local parties itself; TFP dealer)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcache.eval.results_docs_trunc import magnitude_lines  # noqa: E402
from protocols.net import runtime  # noqa: E402

PROMPT = "What is private inference?"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--approx", default="fast")
    p.add_argument("--new-tokens", type=int, default=3, help="prefill (token 1) + N-1 decode steps")
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--json", help="write the record here")
    p.add_argument("--render", help="render this record (no run) to --md")
    p.add_argument("--md", default="docs/results/truncation.md")
    return p.parse_args()


class Tally:
    """Per (stage, phase, site): elements, max |x|, sum |x| / 2^64."""

    def __init__(self, backend):
        self.backend, self.stage, self.rows = backend, "prefill", {}

    def __call__(self, site: str, values) -> None:
        stack = self.backend.meter._stack
        key = (self.stage, stack[-1] if stack else "other", site)
        row = self.rows.setdefault(key, [0, 0.0, 0.0])
        mags = values.double().abs()
        row[0] += values.numel()
        row[1] = max(row[1], float(mags.max())) if values.numel() else row[1]
        row[2] += float(mags.sum()) / 2.0**64


def run(args) -> int:
    def body() -> int:
        from mpcache.core.approximations import Approximations
        from protocols.mpc.session import build, private_generate
        from protocols.ring import trunc

        party = runtime.init("tfp", args.timeout)
        pm = build(party, args.model, Approximations.preset(args.approx))
        tally = Tally(pm.backend)
        ids = pm.model.tokenizer.encode(args.prompt, chat=True) if party.is_client else None

        def on_token(token, cost):
            tally.stage = "decode"

        trunc.record(tally)
        result = private_generate(pm, ids, args.new_tokens, on_token)
        trunc.record(None)
        if party.is_client:
            rows = [{"stage": s, "phase": p, "site": site, "elements": n, "max_abs": m,
                     "expected_failures": e} for (s, p, site), (n, m, e) in sorted(tally.rows.items())]
            record = {"model": args.model, "approx": args.approx, "prompt": args.prompt,
                      "prompt_len": len(ids), "new_tokens": args.new_tokens, "dealer": "tfp",
                      "tokens": result.result.new_ids,
                      "text": pm.model.tokenizer.decode(result.result.new_ids),
                      "decode_steps": args.new_tokens - 1, "rows": rows}
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(record, indent=1))
            print(f"wrote {args.json}: {len(rows)} sites", file=sys.stderr)
        return 0

    return runtime.run_party(body)


def render(record_path: str, md_path: str) -> None:
    """The per-site table of a magnitudes record, as the results documents render it."""
    Path(md_path).parent.mkdir(parents=True, exist_ok=True)
    Path(md_path).write_text("\n".join(magnitude_lines(Path(record_path), "#")))


def main() -> int:
    args = parse()
    if args.render:
        render(args.render, args.md)
        return 0
    if not args.json:
        raise SystemExit("--json is required for a run")
    if not runtime.under_torchrun():
        from protocols.net.launch import launch_self

        return launch_self("tfp")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
