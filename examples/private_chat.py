"""A private terminal chat: the client types, the server's model answers, the server sees no text.

Two separate commands (two terminals, or two machines; the server's address is the rendezvous):
    python examples/private_chat.py server --addr 0.0.0.0 --port 29500
    python examples/private_chat.py client --addr SERVER_IP --port 29500
With a trusted dealer, start a third command and pass --dealer ttp to all three:
    python examples/private_chat.py dealer --addr SERVER_IP --port 29500 --dealer ttp

Each turn re-runs the private prefill over the whole conversation (the history lives on the client
only), streams the reply token by token and prints the turn's online MB / rounds / seconds.
Type /quit (or end the input) to stop both parties.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols import runtime  # noqa: E402

ROLE_RANK = {"server": runtime.SERVER, "client": runtime.CLIENT, "dealer": runtime.DEALER}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=sorted(ROLE_RANK))
    p.add_argument("--addr", default="127.0.0.1", help="the server's address (rendezvous)")
    p.add_argument("--port", type=int, default=29500)
    p.add_argument("--dealer", choices=runtime.DEALERS, default="tfp")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--timeout", type=float, default=3600, help="seconds a party waits for the other "
                   "(the server waits while the user types)")
    return p.parse_args()


def main() -> int:
    args = parse()
    os.environ.update(RANK=str(ROLE_RANK[args.role]), WORLD_SIZE=str(runtime.world_size(args.dealer)),
                      MASTER_ADDR=args.addr, MASTER_PORT=str(args.port))

    def body() -> int:
        from mpcache.commands.generate import StreamPrinter
        from protocols.accounting import total
        from protocols.session import build, private_generate

        party = runtime.init(args.dealer, args.timeout)
        out = sys.stderr
        if party.is_server:
            print(f"[server: {runtime.DEALER_NOTE[party.dealer]}; sharing the weights ...]", file=out)
        pm = build(party, args.model)
        tok = pm.model.tokenizer
        history: list[dict[str, str]] = []
        if party.is_client:
            print(f"[connected: {runtime.DEALER_NOTE[party.dealer]}. Type a message, /quit to stop]",
                  file=out)
        while True:
            message = _read_message() if party.is_client else None
            go = pm.backend.comm.broadcast_obj(message is not None if party.is_client else None,
                                               runtime.CLIENT)
            if not go:
                return 0
            ids = None
            if party.is_client:
                history.append({"role": "user", "content": message})
                ids = (tok.encode_chat(history) if getattr(tok, "has_chat_template", False)
                       else tok.encode(message))
            printer = StreamPrinter(tok) if party.is_client else None
            costs = []

            def on_token(token, cost, printer=printer, costs=costs):
                costs.append(total(cost))
                if printer is not None and token not in tok.eos_token_ids:
                    printer.push(token)

            if party.is_client:
                sys.stdout.write("assistant> ")
            run = private_generate(pm, ids, args.max_new_tokens, on_token)
            turn = sum(costs[1:], costs[0])
            line = (f"[turn: {len(run.result.new_ids)} tokens, prompt {run.result.prompt_len} tokens; "
                    f"online {turn.online_bytes / 1e6:.1f} MB, {turn.rounds} rounds, {run.seconds:.1f} s]")
            if party.is_client:
                print()
                history.append({"role": "assistant", "content": tok.decode(printer.ids)})
            print(line, file=out, flush=True)

    return runtime.run_party(body, args.role)


def _read_message() -> str | None:
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            return None
        if text == "/quit":
            return None
        if text:
            return text


if __name__ == "__main__":
    sys.exit(main())
