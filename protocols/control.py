"""The chat's control channel: a plain TCP connection next to the MPC traffic.

Before any secret work the client (and, with TTP, the dealer) connect to the server's port and
exchange their settings (:data:`CHECKED`); a mismatch stops every side with a message naming it,
and a second client is turned away. During the session the channel carries the public turn
requests (token count, answer cap, /reset, /quit), and it is how a party learns at once that the
other one stopped (Ctrl-C, a crash or a kill closes it), even while gloo waits inside C++.
The MPC rendezvous (torch.distributed's store) then runs on the next port, ``port + 1``.
"""

from __future__ import annotations

import json
import queue
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from protocols.runtime import RuntimeFault, exit_now

PROTOCOL_VERSION = 1
# Settings both sides must agree on, with the words a mismatch message uses.
CHECKED = {"version": "protocol version", "arch": "model architecture", "dealer": "dealer",
           "policy": "KV policy", "budget": "cache budget"}
PROGRESS_EVERY_S = 10.0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Channel:
    """JSON lines over a socket (own buffer: a timed-out read must leave the stream usable)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""
        self.lock = threading.Lock()

    def send(self, obj: dict) -> None:
        with self.lock:
            self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def try_send(self, obj: dict) -> None:
        try:
            self.sock.settimeout(1.0)
            self.send(obj)
        except OSError:
            pass

    def recv(self, timeout: float | None = None) -> dict | None:
        """The next message, or None when the peer closed the connection; TimeoutError after
        ``timeout`` seconds without a whole line (what arrived so far is kept)."""
        self.sock.settimeout(timeout)
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def describe(settings: dict) -> str:
    a = settings["arch"]
    digest = f", weights {settings['digest'][:12]}" if settings.get("digest") else ""
    return (f"{settings['model']} ({a['num_layers']} layers, hidden {a['hidden_size']}, vocab "
            f"{a['vocab_size']}{digest})")


def mismatch(server: dict, other: dict) -> str | None:
    """The first setting the two sides disagree on, as a sentence; None if they agree."""
    role = other["role"]
    if server["version"] != other["version"]:
        return f"protocol version mismatch: server {server['version']}, {role} {other['version']}"
    if role == "dealer":
        if server["dealer"] != "ttp":
            return "the server runs --dealer tfp: it needs no dealer process"
        return None
    if server["arch"] != other["arch"]:
        return (f"model mismatch: the server runs {describe(server)}, the client expects "
                f"{describe(other)}")
    want = other.get("expect_digest")
    if want and not server["digest"].startswith(want):
        return (f"model mismatch: the server's weights digest is {server['digest'][:16]}, the client "
                f"expects {want}")
    for key, words in CHECKED.items():
        if key != "arch" and server[key] != other[key]:
            return f"{words} mismatch: server --{key} {server[key]}, client --{key} {other[key]}"
    return None


# --- client / dealer side ----------------------------------------------------------------------------
def connect(host: str, port: int, hello: dict, timeout_s: float) -> tuple[Channel, dict]:
    """Connect to the server (retrying while it is not up), send ``hello``, return the server's
    settings. Progress every 10 s; RuntimeFault after ``timeout_s`` or when refused."""
    start = time.monotonic()
    last = start
    what = f"the server at {host}:{port}"

    def tick(state: str) -> None:
        nonlocal last
        now = time.monotonic()
        if now - start > timeout_s:
            raise RuntimeFault(f"gave up after {timeout_s:.0f} s {state} {what} (is it running, with "
                               "this --addr and --port? --connect-timeout sets the wait)")
        if now - last >= PROGRESS_EVERY_S:
            say(f"[{state} {what}... {now - start:.0f} s]")
            last = now

    say(f"[connecting to {what} ...]")
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=2.0)
            break
        except OSError:
            tick("waiting for")
            time.sleep(0.5)
    channel = Channel(sock)
    channel.send(hello)
    while True:
        try:
            reply = channel.recv(timeout=1.0)
        except TimeoutError:
            tick("waiting for an answer from")
            continue
        if reply is None:
            raise RuntimeFault(f"{what} closed the connection during the handshake")
        if reply.get("error"):
            raise RuntimeFault(reply["error"])
        if reply.get("ok"):
            return channel, reply["settings"]
        say(f"[{reply.get('status', 'waiting')}]")


# --- server side -------------------------------------------------------------------------------------
@dataclass
class Lobby:
    """The server's listening socket: seats one client (and one dealer with TTP), refuses the rest."""

    host: str
    port: int
    settings: dict
    sock: socket.socket = field(init=False)
    seated: dict[str, Channel] = field(default_factory=dict, init=False)

    def __post_init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((self.host, self.port))
        except OSError as exc:
            raise RuntimeFault(f"cannot listen on {self.host}:{self.port} ({exc.strerror}): choose "
                               "another --port") from None
        self.sock.listen(8)

    def wait_for_parties(self, need_dealer: bool) -> Channel:
        """Block (interruptibly) until the client and, if needed, the dealer are seated and agree."""
        needed = {"client", "dealer"} if need_dealer else {"client"}
        self.sock.settimeout(0.5)
        while not needed <= set(self.seated):
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            self._greet(Channel(conn), peer, needed)
        for channel in self.seated.values():
            channel.send({"ok": True, "settings": self.settings})
        threading.Thread(target=self._refuse_forever, daemon=True).start()
        return self.seated["client"]

    def _greet(self, channel: Channel, peer, needed: set[str]) -> None:
        try:
            hello = channel.recv(timeout=10.0)
        except (OSError, ValueError):
            hello = None
        if not hello or hello.get("role") not in ("client", "dealer"):
            channel.close()  # not one of ours (a port scanner, a stray connection)
            return
        role = hello["role"]
        if role in self.seated or role not in needed:
            reason = ("the server already has a " + role if role in self.seated
                      else "the server runs --dealer tfp and needs no dealer")
            channel.try_send({"error": reason})
            channel.close()
            return
        problem = mismatch(self.settings, hello)
        if problem:
            channel.try_send({"error": problem})
            for other in self.seated.values():
                other.try_send({"error": f"stopped: the {role} at {peer[0]} has a {problem}"})
            raise RuntimeFault(f"{role} at {peer[0]}: {problem}")
        self.seated[role] = channel
        say(f"[server: {role} connected from {peer[0]}]")
        missing = needed - set(self.seated)
        status = f"connected to the server; waiting for the {' and the '.join(sorted(missing))}"
        for other in self.seated.values():
            if missing:
                other.try_send({"status": status})

    def _refuse_forever(self) -> None:
        self.sock.settimeout(None)
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            channel = Channel(conn)
            channel.try_send({"error": "the server is busy with another client; try again later"})
            channel.close()


# --- during the session ------------------------------------------------------------------------------
class Peer:
    """Reads the other party's control messages in a thread. A closed connection or a stop message
    outside a clean /quit ends this process at once with one line (exit status 3)."""

    def __init__(self, channel: Channel, me: str, them: str):
        self.channel, self.me, self.them = channel, me, them
        self.inbox: queue.Queue = queue.Queue()
        self.closing = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                msg = self.channel.recv(timeout=None)
            except (OSError, ValueError):
                msg = None
            if msg is None or msg.get("op") == "stopped":
                if self.closing:
                    return
                why = msg.get("why", "stopped") if msg else "disconnected (killed or crashed?)"
                exit_now(f"mpcache: {self.me}: the {self.them} {why}; ending the session", 3)
            self.inbox.put(msg)
            if msg.get("op") == "quit":
                self.closing = True
                return

    def send(self, obj: dict) -> None:
        self.channel.send(obj)

    def get(self) -> dict:
        while True:  # a timed wait keeps the main thread interruptible
            try:
                return self.inbox.get(timeout=0.5)
            except queue.Empty:
                continue

    def stop(self, why: str) -> None:
        """Tell the other party this one is ending (Ctrl-C, a fault), best effort."""
        self.closing = True
        self.channel.try_send({"op": "stopped", "why": why})
