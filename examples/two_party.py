"""Private generation by two parties: the server (rank 0) holds SmolLM2's weights, the client
(rank 1) holds the prompt and alone sees the answer.

One machine:
    torchrun --nproc_per_node=2 examples/two_party.py --prompt "What is 2PC?"
With a KV-cache policy (the selected tokens stay secret; their count is public):
    torchrun --nproc_per_node=2 examples/two_party.py --policy mpcache --budget 0.1 --prompt "..."
With the first construction of the approximations (~3x the rounds of the default fast preset):
    torchrun --nproc_per_node=2 examples/two_party.py --approx v1 --prompt "..."
With a trusted dealer as a third process:
    torchrun --nproc_per_node=3 examples/two_party.py --dealer ttp --prompt "..."
Two machines (run on each; --node_rank 0 on the server's machine):
    torchrun --nnodes=2 --nproc_per_node=1 --node_rank=0|1 --master_addr=SERVER_IP --master_port=29500 \\
        examples/two_party.py --prompt "..."     (only the client's --prompt is used)
Without --launch-local and outside torchrun it starts the two local parties itself.

Links: the parties' direct link and the dealer's are TLS 1.3, authenticated by a session secret
(MPCACHE_SESSION_SECRET, hex, the same for all parties: `export MPCACHE_SESSION_SECRET=$(openssl
rand -hex 32)` before plain `torchrun`; local launches and mpcache-torchrun make one) or by pinned
keys (`mpcache keys server.pem` prints a fingerprint; --key server.pem on the server,
--peer-fingerprint FP on the other side; the client can pin the dealer with --expect-dealer FP).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcache.core.approximations import MPC_DEFAULT_TTP, mpc_default  # noqa: E402
from mpcache.core.errors import UserError  # noqa: E402
from mpcache.policies import check_supported  # noqa: E402
from protocols.net import links, runtime  # noqa: E402


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_Formatter)
    p.add_argument("--prompt", default="In one sentence, what is secure two-party computation?")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--dealer", choices=runtime.DEALERS, default="tfp")
    p.add_argument("--policy", default="full",
                   help="KV-cache policy NAME[:KEY=VALUE...] (full, streaming, h2o, snapkv, quest, mpcache)")
    p.add_argument("--budget", type=float, default=0.1, help="fraction of the prompt attended per step")
    p.add_argument("--approx", default=None, choices=["v1", "fast", "fast-lite", "fast-lite3"],
                   help=f"MPC approximation preset (default fast: ~1/3 of v1's rounds, same accuracy; "
                   f"{MPC_DEFAULT_TTP} with --dealer ttp)")
    p.add_argument("--no-mask-reuse", action="store_true")
    p.add_argument("--reveal-logits", action="store_true",
                   help="reveal the logits to the client (leaks them; lets the client sample)")
    p.add_argument("--plaintext-compare", action="store_true",
                   help="the server also times plaintext generation for the cost table")
    p.add_argument("--timeout", type=float, default=600)
    links.add_flags(p)
    return p.parse_args()


def main() -> int:
    args = parse()
    args.approx = args.approx or mpc_default(args.dealer)
    links.apply_flags_or_exit(args)
    try:
        check_supported(args.policy, "mpc")  # a plaintext-only policy: one line, before any launch
    except UserError as exc:
        sys.exit(f"two_party: error: {exc}")
    if not runtime.under_torchrun():
        from protocols.net.launch import launch_self

        return launch_self(args.dealer)

    def body() -> int:
        from mpcache.core.approximations import Approximations
        from mpcache.generation.stream import StreamPrinter
        from mpcache.policies import parse_spec
        from mpcache.programs.parties.report import CostTable
        from protocols.mpc.session import build, check_same, private_generate

        policy = parse_spec(args.policy, args.budget)  # a bad spec fails before connecting
        party = runtime.init(args.dealer, args.timeout)
        say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if party.is_client else (lambda msg: None)
        say(f"[{runtime.DEALER_NOTE[party.dealer]}]")
        say(f"[setting up {args.model}: the server shares and masks its weights once ...]")
        pm = build(party, args.model, Approximations.preset(args.approx), mask_reuse=not args.no_mask_reuse,
                   reveal_logits=args.reveal_logits)
        check_same(pm.backend, (args.policy, args.budget, args.approx))
        if args.policy == "full":
            say("[policy full: every cached token is attended]")
        else:
            say(f"[policy {args.policy}, budget {args.budget}: which tokens are attended stays secret; "
                f"the counts are public]")
        tok = pm.model.tokenizer
        ids = tok.encode(args.prompt, chat=args.chat) if party.is_client else None
        table = CostTable()
        printer = StreamPrinter(tok) if party.is_client else None

        def on_token(token, cost):
            table.add(cost)
            if printer is not None:
                printer.push(token)

        run = private_generate(pm, ids, args.max_new_tokens, on_token, policy=policy)
        if party.is_client:
            print()
            print(table.render(plaintext_per_token_s=_plain_seconds(args, len(ids)) if args.plaintext_compare
                               else None), file=sys.stderr)
            print(f"[{len(run.result.new_ids)} tokens in {run.seconds:.1f} s; setup "
                  f"{pm.setup.online_bytes / 1e6:.0f} MB once]", file=sys.stderr)
        return 0

    return runtime.run_party(body)


def _plain_seconds(args, prompt_len: int) -> float:
    from mpcache.programs.parties.bench_party import plaintext_seconds

    return plaintext_seconds(args.model, prompt_len, min(args.max_new_tokens, 8))[1]


if __name__ == "__main__":
    sys.exit(main())
