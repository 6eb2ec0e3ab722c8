"""``mpcache generate``: plaintext greedy generation with a KV-cache policy."""

from __future__ import annotations

import argparse
import sys

from mpcache.core.backend import PlainBackend
from mpcache.generation.generate import check_lengths, generate
from mpcache.generation.stream import StreamPrinter
from mpcache.models import DEFAULT_MODEL, Transformer, load_model
from mpcache.policies import parse_spec


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a continuation in plaintext")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--model", default=DEFAULT_MODEL, help="smollm2 | PATH to HF folder | random:PRESET")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--policy", default="full",
                   help="KV-cache policy NAME[:KEY=VALUE...] (full, streaming, h2o, snapkv, quest, mpcache)")
    p.add_argument("--budget", type=float, default=1.0, help="fraction of prompt tokens attended")
    p.add_argument("--stats", action="store_true", help="print timings on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    policy = parse_spec(args.policy, args.budget)
    model = load_model(args.model)
    ids = model.tokenizer.encode(args.prompt, chat=args.chat)
    check_lengths(len(ids), args.max_new_tokens, model.config.max_positions)
    transformer = Transformer(model.config, model.weights, PlainBackend(), policy)
    printer = StreamPrinter(model.tokenizer)
    result = generate(
        transformer, ids, args.max_new_tokens, model.tokenizer.eos_token_ids, printer.push
    )
    printer.finish()
    if args.stats:
        n = len(result.new_ids)
        print(
            f"[{args.model}: load {model.load_seconds:.2f} s, prompt {len(ids)} tokens, "
            f"prefill {result.prefill_seconds:.2f} s, {n} tokens in {result.decode_seconds:.2f} s]",
            file=sys.stderr,
        )
    return 0


