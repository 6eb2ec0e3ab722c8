"""Does private generation equal plaintext generation with the same approximations?

For each prompt the two parties generate greedily under MPC; the client also runs
``PlainBackend(Approximations(exact=False))`` greedily and compares token by token, and reports the
max |logit difference| per step (the MPC logits are revealed to the client for this check only,
along the MPC run's own tokens). Writes one JSON line per prompt to --json.

    python examples/compare_plaintext.py --new-tokens 16 --json results/mpc_vs_plain.jsonl
(it starts the two local parties itself; or run it under torchrun --nproc_per_node=2|3)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcache.core.approximations import mpc_default  # noqa: E402
from protocols.net import links, runtime  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_Formatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prompt", action="append", help="repeatable; default: three short questions")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--dealer", choices=runtime.DEALERS, default="tfp")
    p.add_argument("--no-chat", action="store_true")
    p.add_argument("--timeout", type=float, default=600)
    links.add_flags(p)
    p.add_argument("--approx", default=None,
                   help="approximation preset (mpcache.core.backend.PRESETS; default by dealer: mpc_default)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every prompt N times (one setup, fresh randomness each: a failure rate)")
    p.add_argument("--tolerance", type=float, default=0.5,
                   help="max |logit difference| of a good run (fixed-point error; beyond it: a failure)")
    p.add_argument("--json", required=True)
    return p.parse_args()


def plain_logits(model, ids: list[int], tokens: list[int]):
    """Teacher-forced logits along ``tokens`` and the free-running greedy tokens."""
    cache = model.new_cache()
    forced = [model.forward(ids, cache)[-1]]
    for t in tokens[:-1]:
        forced.append(model.forward([t], cache)[-1])
    cache = model.new_cache()
    greedy, logits = [], model.forward(ids, cache)[-1]
    for _ in tokens:
        greedy.append(int(logits.argmax()))
        logits = model.forward([greedy[-1]], cache)[-1]
    return forced, greedy


def main() -> int:
    args = parse()
    args.approx = args.approx or mpc_default(args.dealer)
    links.apply_flags_or_exit(args)
    if not runtime.under_torchrun():
        from protocols.net.launch import launch_self

        return launch_self(args.dealer)

    def body() -> int:
        import torch

        from mpcache.core.approximations import Approximations
        from mpcache.core.backend import PlainBackend
        from mpcache.models import Transformer, load_model
        from protocols.mpc.session import build, private_generate

        party = runtime.init(args.dealer, args.timeout)
        pm = build(party, args.model, Approximations.preset(args.approx), debug_logits=True)
        plain = None
        if party.is_client:
            m = load_model(args.model)
            plain = Transformer(m.config, m.weights, PlainBackend(pm.backend.approx))
            exact = Transformer(m.config, m.weights, PlainBackend(Approximations()))
        for run_index, prompt in enumerate([p for p in args.prompt or PROMPTS for _ in range(args.repeat)]):
            ids = pm.model.tokenizer.encode(prompt, chat=not args.no_chat) if party.is_client else None
            shown: list = []

            def keep(token, cost, shown=shown):
                if party.is_client:
                    shown.append(pm.backend.last_logits)

            start = time.perf_counter()
            run = private_generate(pm, ids, args.new_tokens, keep)
            if not party.is_client:
                continue
            tokens = run.result.new_ids
            forced, greedy = plain_logits(plain, ids, tokens)
            _, exact_greedy = plain_logits(exact, ids, tokens)
            diffs = [float((a - b).abs().max()) for a, b in zip(shown, forced, strict=True)]
            margins = [float(v[0] - v[1]) for v in (f.topk(2).values for f in forced)]
            pairs = enumerate(zip(tokens, greedy, strict=False))
            first_mismatch = next((i for i, (a, b) in pairs if a != b), None)
            record = {
                "model": args.model, "dealer": party.dealer, "approx": args.approx, "run": run_index,
                "prompt": prompt, "prompt_len": len(ids),
                "mpc_tokens": tokens, "plain_approx_tokens": greedy, "plain_exact_tokens": exact_greedy,
                "match": tokens == greedy[: len(tokens)], "first_mismatch": first_mismatch,
                "matches_exact": tokens == exact_greedy[: len(tokens)],
                "logits_max_abs_diff_per_step": diffs,
                "plain_top2_margin_per_step": margins,
                "failed": max(diffs) > args.tolerance, "tolerance": args.tolerance,
                "mpc_text": pm.model.tokenizer.decode(tokens), "seconds": time.perf_counter() - start,
                "torch": torch.__version__,
            }
            verdict = f"{'FAIL' if record['failed'] else 'ok'} {'MATCH' if record['match'] else 'DIFFER'}"
            print(f"{verdict} {prompt!r}: {record['mpc_text']!r} "
                  f"max|dlogit| {max(diffs):.3f}", file=sys.stderr, flush=True)
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            with open(args.json, "a") as f:
                f.write(json.dumps(record) + "\n")
        return 0

    return runtime.run_party(body)


if __name__ == "__main__":
    sys.exit(main())
