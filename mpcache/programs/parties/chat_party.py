"""The three parties of ``mpcache chat``: handshake on the control channel, MPC setup, turn loop.

Order for every party: control handshake (settings checked; progress while waiting), then the
CrypTen rendezvous on ``port + 1``, then the server shares its weights once, then turns. Every
wait is bounded or interruptible: Ctrl-C ends a party within a second and the other side says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from mpcache.core.approximations import Approximations
from mpcache.core.errors import UserError
from mpcache.generation.chat import ChatFormat, Conversation, TurnRefused
from mpcache.generation.stream import StreamPrinter
from mpcache.models import load_model
from protocols.mpc.session import build, private_turn
from protocols.net import runtime, tls
from protocols.net.accounting import NETWORKS, Cost
from protocols.net.control import PROTOCOL_VERSION, Peer, describe, mismatch, say
from protocols.net.lobby import Lobby, connect, party_credentials, server_credentials, show_keys

DEALER_FOREVER_S = 7 * 24 * 3600.0  # the dealer idles in gloo while the user types


def main(args) -> int:
    role = args.role
    runtime.stop_on_interrupt(role)
    body = {"server": serve, "client": chat, "dealer": deal}[role]
    return runtime.run_party(lambda: body(args), role)


def weights_digest(weights) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(weights[name].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _arch(config) -> dict:
    return json.loads(json.dumps(config.to_dict()))  # as it comes back from the wire


def _start_mpc(args, channel, rank: int, addr: str) -> tuple[Peer, runtime.Party]:
    """After the settings check: tell the peer when this party ends, then join the MPC session."""
    me, other = ("server", "client") if rank == runtime.SERVER else ("client", "server")
    peer = Peer(channel, me, other)
    runtime.on_exit(_notify_peer(peer))
    _mpc_env(args, rank, addr)
    return peer, runtime.init(args.dealer, args.timeout, args.connect_timeout)


def _mpc_env(args, rank: int, addr: str) -> None:
    """``addr``: the server's address as the parties reach it. The server takes the address its
    client connected to (never 0.0.0.0, nor 127.0.0.1 for a remote client): the direct link
    (protocols.net.fastcomm) listens on and advertises the address it uses towards MASTER_ADDR."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(runtime.world_size(args.dealer)), MASTER_ADDR=addr,
                      MASTER_PORT=str(args.port + 1), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _notify_peer(peer: Peer):
    def hook(message: str) -> None:
        why = message.split(": ", 2)[-1] if message.startswith("mpcache:") else message
        peer.stop(f"stopped ({why})")

    return hook


@dataclass
class Totals:
    turns: int = 0
    tokens: int = 0
    cost: Cost = field(default_factory=Cost)


def turn_line(k: int, turn, conv, seconds: float) -> str:
    c, r = turn.cost, turn.result
    dealer = (f"; dealer {c.dealer_bytes / 1e6:.1f} MB, {c.dealer_rounds} requests"
              if c.dealer_bytes or c.dealer_rounds else "; dealer: none (TFP)")
    return (f"[turn {k}: {r.prompt_len} prompt + {len(r.new_ids)} answer tokens; online "
            f"{c.online_bytes / 1e6:.1f} MB, {c.rounds} rounds{dealer}; {seconds:.1f} s; cache "
            f"{r.cache_tokens} tokens, position {conv.position}/{conv.model.config.max_positions}]")


# --- server --------------------------------------------------------------------------------------------
def serve(args) -> int:
    creds = server_credentials(args, args.dealer == "ttp")
    lobby = Lobby(args.addr, args.port, {}, creds)
    show_keys("server", creds)
    if not _port_free(args.addr, args.port + 1):
        raise runtime.RuntimeFault(f"port {args.port + 1} (the MPC rendezvous, --port + 1) is in use: "
                                   "choose another --port")
    say(f"[server: loading {args.model} ...]")
    model = load_model(args.model)
    settings = {"role": "server", "version": PROTOCOL_VERSION, "model": args.model,
                "arch": _arch(model.config), "digest": weights_digest(model.weights),
                "dealer": args.dealer, "policy": args.policy, "budget": args.budget, "approx": args.approx,
                "max_new_tokens": args.max_new_tokens, "max_prompt_tokens": args.max_prompt_tokens}
    lobby.settings = settings
    say(f"[server: {describe(settings)}; {runtime.DEALER_NOTE[args.dealer]}]")
    say(f"[server: policy {args.policy}, budget {args.budget} tokens, messages up to "
        f"{args.max_prompt_tokens} tokens, answers capped at {args.max_new_tokens} tokens]")
    extra = (f" and the dealer (mpcache chat dealer --addr HOST --port {args.port})"
             if args.dealer == "ttp" else "")
    say(f"[server: listening on {args.addr}:{args.port} (MPC on port {args.port + 1}); waiting for a "
        f"client{extra}; Ctrl-C stops]")
    channel = lobby.wait_for_parties(args.dealer == "ttp")
    peer, party = _start_mpc(args, channel, runtime.SERVER, lobby.reached_at or args.addr)
    say("[server: sharing and masking the weights once ...]")
    pm = build(party, args.model, Approximations.preset(args.approx), loaded=model)
    say(f"[server: ready (setup {pm.setup.online_bytes / 1e6:.0f} MB, {pm.setup.compute_s:.0f} s); "
        "the client's text stays with the client]")
    conv = Conversation(pm.transformer, args.policy, args.budget)
    turns = 0
    while True:
        msg = peer.get()
        op = msg.get("op")
        if op == "quit":
            say("[server: the client ended the chat]")
            return 0
        if op == "reset":
            conv.reset()
            say("[server: new conversation]")
        elif op == "turn":
            n, max_new = msg["n"], min(msg["max_new"], args.max_new_tokens)
            problem = turn_problem(conv, n, max_new, args.max_prompt_tokens)
            if problem:  # the server's own limits: the turn is refused, the chat goes on
                peer.send({"op": "refused", "why": problem})
                say(f"[server: refused a turn: {problem}]")
                continue
            peer.send({"op": "go"})
            start = time.perf_counter()
            turn = private_turn(pm, conv, None, n, max_new)
            turns += 1
            # Party 0's counts are the ones reported (only it talks to the TTP dealer): the client
            # shows these, so both lines agree.
            peer.send({"op": "cost", "turn": asdict(turn.cost), "prefill": asdict(turn.prefill)})
            say(turn_line(turns, turn, conv, time.perf_counter() - start))


# --- dealer --------------------------------------------------------------------------------------------
def deal(args) -> int:
    if args.dealer != "ttp":
        raise runtime.RuntimeFault("the dealer role needs --dealer ttp")
    hello = {"role": "dealer", "version": PROTOCOL_VERSION}
    channel, server, _ = connect(args.addr, args.port, hello, args.connect_timeout,
                                 party_credentials(args, "dealer"))
    say(f"[dealer: serving {describe(server)}; the dealer sees no input, only randomness requests]")
    _mpc_env(args, runtime.DEALER, args.addr)
    runtime.init("ttp", DEALER_FOREVER_S, args.connect_timeout)  # serves until the server ends
    return 0


# --- client --------------------------------------------------------------------------------------------
def chat(args) -> int:
    model = load_model(args.model)
    hello = {"role": "client", "version": PROTOCOL_VERSION, "model": args.model, "arch": _arch(model.config),
             "dealer": args.dealer, "policy": args.policy, "budget": args.budget, "approx": args.approx,
             "expect_digest": args.expect_digest, "expect_dealer": args.expect_dealer}
    channel, server, _ = connect(args.addr, args.port, hello, args.connect_timeout,
                                 party_credentials(args, "client"))
    problem = mismatch(server, hello) or dealer_problem(server, args.expect_dealer)
    if problem:
        raise runtime.RuntimeFault(problem)
    if server["dealer_fingerprint"]:
        say(f"[client: the dealer's key {server['dealer_fingerprint']} (as the server saw it"
            f"{'; pinned' if args.expect_dealer else ''})]")
    max_new = min(args.max_new_tokens, server["max_new_tokens"])
    say(f"[connected to {describe(server)}; {runtime.DEALER_NOTE[args.dealer]}]")
    if args.max_new_tokens > max_new:
        say(f"[the server caps answers at {max_new} tokens (you asked for {args.max_new_tokens})]")
    if args.max_prompt_tokens > server["max_prompt_tokens"]:
        say(f"[the server takes messages up to {server['max_prompt_tokens']} tokens]")
    peer, party = _start_mpc(args, channel, runtime.CLIENT, args.addr)
    say("[setting up: the server shares and masks its weights once ...]")
    pm = build(party, args.model, Approximations.preset(args.approx), loaded=model)
    tok = pm.model.tokenizer
    conv = Conversation(pm.transformer, args.policy, args.budget)
    fmt = ChatFormat(tok)
    totals = Totals()
    say(f"[ready: policy {args.policy}, budget {args.budget} tokens, answers up to {max_new} tokens. "
        "Type a message; /stats, /reset, /quit]")
    while True:
        text = read_message()
        if text is None or text == "/quit":
            peer.closing = True
            peer.send({"op": "quit"})
            return 0
        if text == "/stats":
            say(stats_line(totals, conv))
            continue
        if text == "/reset":
            peer.send({"op": "reset"})
            conv.reset()
            say("[new conversation: the secret cache is empty]")
            continue
        if text.startswith("/"):
            say("[commands: /stats, /reset, /quit]")
            continue
        ids = fmt.turn_ids(text, first=conv.turns == 0, last_token=conv.last_token)
        try:
            if len(ids) > args.max_prompt_tokens:
                raise TurnRefused(f"the message is {len(ids)} tokens, the limit is {args.max_prompt_tokens} "
                                  "(--max-prompt-tokens)")
            conv.check(len(ids), max_new)
        except TurnRefused as exc:
            say(f"[refused: {exc}; nothing was sent]")
            continue
        peer.send({"op": "turn", "n": len(ids), "max_new": max_new})
        answer = peer.get()
        if answer.get("op") != "go":  # the server's own limits (it says why)
            say(f"[refused by the server: {answer.get('why', answer.get('op'))}; the chat goes on]")
            continue
        printer = StreamPrinter(tok)
        sys.stdout.write("assistant> ")
        sys.stdout.flush()
        start = time.perf_counter()
        turn = private_turn(pm, conv, ids, len(ids), max_new, partial(_show, tok, printer))
        seconds = time.perf_counter() - start
        print(flush=True)
        counted = peer.get()  # the server's counts of this turn (see serve)
        turn = replace(turn, cost=_cost(counted, "turn"), prefill=_cost(counted, "prefill"))
        totals.turns += 1
        totals.tokens += len(ids) + len(turn.result.new_ids)
        totals.cost = totals.cost + turn.cost
        say(turn_line(totals.turns, turn, conv, seconds))
        if args.json:
            _record(args, totals.turns, turn, seconds, conv, ids)


def dealer_problem(server: dict, pin: str | None) -> str | None:
    """The client's own check of the dealer the server seated against its --expect-dealer."""
    seen = server["dealer_fingerprint"]
    if pin and server["dealer"] == "ttp" and seen != tls.normalize_fp(pin):
        return (f"the dealer's key {str(seen)[:16]} is not the pinned {tls.normalize_fp(pin)[:16]} "
                "(--expect-dealer)")
    return None


def turn_problem(conv, n: int, max_new: int, max_prompt: int) -> str | None:
    """Why the server will not run a turn of ``n`` tokens (public facts only), or None."""
    if n > max_prompt:
        return f"the message is {n} tokens, the server's limit is {max_prompt} (--max-prompt-tokens)"
    try:
        conv.check(n, max_new)
    except UserError as exc:  # mpcache.generation.chat.TurnRefused
        return str(exc)
    return None


def _cost(msg: dict, key: str) -> Cost:
    if msg.get("op") != "cost":
        raise runtime.RuntimeFault(f"the server sent {msg.get('op')!r} where its counts belong")
    try:
        return Cost(**msg[key])
    except TypeError:
        raise runtime.RuntimeFault(f"the server sent malformed counts ({key})") from None


def _show(tok, printer, token: int) -> None:
    if token not in tok.eos_token_ids:
        printer.push(token)


def read_message() -> str | None:
    """One line from stdin; None at the end of input. Undecodable or empty lines are refused here."""
    while True:
        sys.stdout.write("you> ")
        sys.stdout.flush()
        raw = sys.stdin.buffer.readline()
        if not raw:
            return None
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            say(f"[refused: the message is not valid UTF-8 (byte {exc.start}); nothing was sent]")
            continue
        if not text:
            say("[refused: empty message; type some text, or /quit]")
            continue
        return text


def stats_line(totals: Totals, conv) -> str:
    c = totals.cost
    return (f"[session: {totals.turns} turns, {totals.tokens} tokens; online {c.online_bytes / 1e6:.1f} MB, "
            f"{c.rounds} rounds; dealer {c.dealer_bytes / 1e6:.1f} MB; {c.compute_s:.1f} s; cache "
            f"{conv.cache_tokens} tokens, position {conv.position}/{conv.model.config.max_positions}]")


def _record(args, k: int, turn, seconds: float, conv, ids: list[int]) -> None:
    rec = {"turn": k, "model": args.model, "dealer": args.dealer, "policy": args.policy,
           "budget": args.budget, "approx": args.approx, "prompt_tokens": turn.result.prompt_len,
           "answer_tokens": len(turn.result.new_ids), "seconds": seconds,
           "cache_tokens": turn.result.cache_tokens, "position": conv.position,
           "turn_cost": turn.cost.to_dict(NETWORKS), "prefill_cost": turn.prefill.to_dict(NETWORKS),
           "ids": ids, "answer_ids": turn.result.new_ids}  # the client's own file: its tokens are its own
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")
