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
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

from mpcache.core.approximations import Approximations
from mpcache.core.errors import UserError, say
from mpcache.generation.chat import ChatFormat, Conversation, TurnRefused
from mpcache.generation.stream import StreamPrinter
from mpcache.models import load_model
from mpcache.policies import parse_spec
from mpcache.programs.parties.chat_ui import (
    CONFIRM_TOKENS,
    Progress,
    Totals,
    confirm,
    read_file,
    read_message,
    stats_line,
    turn_line,
)
from protocols.mpc.session import build, private_turn
from protocols.net import runtime, tls
from protocols.net.accounting import NETWORKS, Cost
from protocols.net.control import PROTOCOL_VERSION, Peer, describe, mismatch
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
                "dealer": args.dealer, "policy": args.policy, "budget": args.budget,
                "stage_tokens": args.stage_tokens, "approx": args.approx,
                "max_new_tokens": args.max_new_tokens, "max_prompt_tokens": args.max_prompt_tokens}
    lobby.settings = settings
    say(f"[server: {describe(settings)}; {runtime.DEALER_NOTE[args.dealer]}]")
    say(f"[server: policy {args.policy}, budget {args.budget:g} of the conversation, messages up to "
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
    conv = Conversation(pm.transformer, partial(parse_spec, args.policy, args.budget), args.stage_tokens,
                        args.policy)
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
            say(f"[server: {conv.kept()}]")


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
             "dealer": args.dealer, "policy": args.policy, "budget": args.budget,
             "stage_tokens": args.stage_tokens, "approx": args.approx, "expect_digest": args.expect_digest,
             "expect_dealer": args.expect_dealer}
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
    conv = Conversation(pm.transformer, partial(parse_spec, args.policy, args.budget), args.stage_tokens,
                        args.policy)
    client = Client(args, pm, peer, conv, max_new)
    say(f"[ready: policy {args.policy}, budget {args.budget:g}, answers up to {max_new} tokens. "
        "Type a message; /file PATH, /stats, /reset, /quit]")
    while True:
        text = read_message()
        if text is None or text == "/quit":
            peer.closing = True
            peer.send({"op": "quit"})
            return 0
        if text == "/stats":
            say(stats_line(client.totals, conv))
        elif text == "/reset":
            peer.send({"op": "reset"})
            conv.reset()
            say("[new conversation: the secret cache is empty]")
        elif text == "/file" or text.startswith("/file "):
            client.send_file(text[len("/file"):])
        elif text.startswith("/"):
            say("[commands: /file PATH, /stats, /reset, /quit]")
        else:
            client.turn(text)


class Client:
    """The client's side of a turn: its checks, the request, the secret turn, the lines it shows."""

    def __init__(self, args, pm, peer: Peer, conv: Conversation, max_new: int):
        self.args, self.pm, self.peer, self.conv, self.max_new = args, pm, peer, conv, max_new
        self.tok = pm.model.tokenizer
        self.fmt = ChatFormat(self.tok)
        self.totals = Totals()

    def ids(self, text: str) -> list[int]:
        return self.fmt.turn_ids(text, first=self.conv.turns == 0, last_token=self.conv.last_token)

    def send_file(self, path: str) -> None:
        """``/file PATH``: the file's text as the message, with its size; a long one asks first."""
        try:
            text = read_file(path)
        except ValueError as exc:
            say(f"[refused: {exc}; nothing was sent]")
            return
        n = len(self.ids(text))
        stage = "; the policy's stage runs after it" if self.conv.will_stage(n) else ""
        say(f"[file {Path(path.strip()).name}: {len(text):,} characters, {n} tokens with this turn's "
            f"template{stage}]")
        if n >= CONFIRM_TOKENS and not confirm(f"send {n} tokens (MPC prefill of every one)?"):
            say("[not sent]")
            return
        self.turn(text)

    def turn(self, text: str) -> None:
        args, conv, peer, max_new = self.args, self.conv, self.peer, self.max_new
        ids = self.ids(text)
        try:
            if len(ids) > args.max_prompt_tokens:
                raise TurnRefused(f"the message is {len(ids)} tokens, the limit is {args.max_prompt_tokens} "
                                  "(--max-prompt-tokens)")
            conv.check(len(ids), max_new)
        except TurnRefused as exc:
            say(f"[refused: {exc}; nothing was sent]")
            return
        peer.send({"op": "turn", "n": len(ids), "max_new": max_new})
        answer = peer.get()
        if answer.get("op") != "go":  # the server's own limits (it says why)
            say(f"[refused by the server: {answer.get('why', answer.get('op'))}; the chat goes on]")
            return
        printer = StreamPrinter(self.tok)
        progress = Progress(len(ids), conv.model.config.num_layers, self.pm.backend.comm)
        conv.model.on_layer = progress.layer
        start = time.perf_counter()
        try:
            show = partial(_show, self.tok, printer, progress)
            turn = private_turn(self.pm, conv, ids, len(ids), max_new, show)
        finally:
            progress.stop()
            conv.model.on_layer = None
        seconds = time.perf_counter() - start
        print(flush=True)
        counted = peer.get()  # the server's counts of this turn (see serve)
        turn = replace(turn, cost=_cost(counted, "turn"), prefill=_cost(counted, "prefill"))
        t = self.totals
        t.turns += 1
        t.tokens += len(ids) + len(turn.result.new_ids)
        t.cost = t.cost + turn.cost
        say(turn_line(t.turns, turn, conv, seconds))
        if args.json:
            _record(args, t.turns, turn, seconds, conv, ids)


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


def _show(tok, printer, progress: Progress, token: int) -> None:
    if not progress.stopped.is_set():  # the first answer token: the prefill is over
        progress.stop()
        sys.stdout.write("assistant> ")
        sys.stdout.flush()
    if token not in tok.eos_token_ids:
        printer.push(token)


def _record(args, k: int, turn, seconds: float, conv, ids: list[int]) -> None:
    r = turn.result
    rest = max(1, len(r.new_ids) - 1)
    rec = {"turn": k, "model": args.model, "dealer": args.dealer, "policy": args.policy,
           "budget": args.budget, "stage_tokens": args.stage_tokens, "approx": args.approx,
           "prompt_tokens": r.prompt_len, "answer_tokens": len(r.new_ids), "seconds": seconds,
           "first_token_s": r.first_token_s, "per_token_s": (seconds - r.first_token_s) / rest,
           "staged": r.staged, "cache_tokens": r.cache_tokens, "position": conv.position, "kept": conv.kept(),
           "turn_cost": turn.cost.to_dict(NETWORKS), "prefill_cost": turn.prefill.to_dict(NETWORKS),
           # The client's own counts per phase (online traffic is the same link's, seen from here).
           "prefill_phases": {k: asdict(v) for k, v in turn.prefill_phases.items()},
           "ids": ids, "answer_ids": turn.result.new_ids}  # the client's own file: its tokens are its own
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")
