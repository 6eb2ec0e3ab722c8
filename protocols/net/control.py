"""The chat's control channel: JSON objects over TLS next to the MPC traffic, authenticated first.

Before any secret work the client (and, with TTP, the dealer) connect to the server's port. The
first thing either side reads is the TLS handshake and the peer's proof of its key or of the
session secret (:mod:`protocols.net.lobby`, :mod:`protocols.net.tls`); only then the hello with the
settings (:data:`CHECKED`). Every message is one JSON object of at most :data:`MAX_LINE` bytes,
checked field by field (:func:`expect`); a handshake has one overall deadline, not a timeout that
resets on every chunk.
During the session the channel carries the public turn requests (token count, answer cap, /reset,
/quit), and it is how a party learns at once that the other one stopped (Ctrl-C, a crash or a
kill closes it), even while gloo waits inside C++. The MPC rendezvous then runs on ``port + 1``.
"""

from __future__ import annotations

import queue
import select
import threading
import time

from protocols.net.runtime import RuntimeFault, exit_now

PROTOCOL_VERSION = 3  # 3: the policy is a registry spec, the budget a fraction, the stage threshold
MAX_LINE = 64 * 1024  # a control message: the settings (a model config) take a few kB
HANDSHAKE_S = 10.0  # a connection proves the secret and says hello within this, in all
# Settings both sides must agree on, with the words a mismatch message uses.
CHECKED = {"version": "protocol version", "arch": "model architecture", "dealer": "dealer",
           "policy": "KV policy", "budget": "cache budget", "stage_tokens": "stage threshold",
           "approx": "approximation preset"}
PROGRESS_EVERY_S = 10.0

# Message schemas: field -> accepted JSON types (bool is not an int here).
HELLO = {"client": {"role": str, "version": int, "model": str, "arch": dict, "dealer": str, "policy": str,
                    "budget": float, "stage_tokens": int, "approx": str, "expect_digest": (str, type(None)),
                    "expect_dealer": (str, type(None))},
         "dealer": {"role": str, "version": int}}
SETTINGS = {"version": int, "model": str, "arch": dict, "digest": str, "dealer": str, "policy": str,
            "budget": float, "stage_tokens": int, "approx": str, "max_new_tokens": int,
            "max_prompt_tokens": int, "dealer_fingerprint": (str, type(None))}
OPS = {"turn": {"n": int, "max_new": int}, "go": {}, "refused": {"why": str}, "reset": {}, "quit": {},
       "stopped": {"why": str}, "cost": {"turn": dict, "prefill": dict}}


class ProtocolError(RuntimeFault):
    """A message that is not what the protocol allows (not JSON, not an object, too long, a field
    of the wrong type): the connection is refused with this one line."""


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {str: "a string", int: "an integer", float: "a number", dict: "an object", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def expect(msg: dict, fields: dict, what: str) -> dict:
    """``msg`` if every field in ``fields`` is there with an accepted type, else ProtocolError."""
    for name, types in fields.items():
        types = types if isinstance(types, tuple) else (types,)
        value = msg.get(name)
        ok = name in msg and isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise ProtocolError(f"malformed {what}: field {name!r} must be {_type_name(types)}")
    return msg


def expect_op(msg: dict) -> dict:
    op = msg.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown control message {str(op)[:40]!r}")
    return expect(msg, OPS[op], f"{op!r} message")


class Channel:
    """JSON objects over an authenticated TLS link (``protocols.net.tls.SecureSocket``: length-prefixed,
    bounded by ``MAX_LINE``). The link is single-threaded by design, so one lock covers each whole
    operation; a reader first waits for data without the lock (a send is never held up by a wait)."""

    def __init__(self, link, max_line: int = MAX_LINE):
        self.link, self.max_line = link, max_line
        self.lock = threading.Lock()

    @property
    def sock(self):
        return self.link.sock

    def send(self, obj: dict, timeout: float = HANDSHAKE_S) -> None:
        with self.lock:
            self.link.send_msg(obj, time.monotonic() + timeout)

    def try_send(self, obj: dict, timeout: float = 1.0) -> None:
        try:
            self.send(obj, timeout)
        except (OSError, RuntimeFault):
            pass

    def _ready(self, timeout: float | None) -> bool:
        """Bytes to read: decrypted or undecrypted ones buffered in the link, or on the socket."""
        link = self.link
        with self.lock:  # the SSL object is never touched by two threads at once
            if link.obj.pending() or link._in.pending:
                return True
        return bool(select.select([link.sock], [], [], timeout)[0])

    def recv(self, timeout: float | None = None, deadline: float | None = None) -> dict | None:
        """The next message, or None when the peer closed the connection. TimeoutError when no
        message began within ``timeout`` seconds or by the monotonic ``deadline`` (the stream stays
        usable); a begun message must be whole within HANDSHAKE_S (or by ``deadline``).
        ProtocolError for a message over the cap or that is not a JSON object."""
        if deadline is not None:
            left = deadline - time.monotonic()
            timeout = left if timeout is None else min(timeout, left)
            if timeout <= 0:
                raise TimeoutError("deadline passed")
        if not self._ready(timeout):
            raise TimeoutError("no message in time")
        end = time.monotonic() + HANDSHAKE_S if deadline is None else deadline
        with self.lock:
            try:
                return self.link.recv_msg(self.max_line, end)
            except RuntimeFault as exc:  # tlsio.LinkError: one line already
                if "closed the connection" in str(exc):
                    return None
                raise ProtocolError(str(exc)) from None

    def close(self) -> None:
        try:
            self.link.close()
        except OSError:
            pass


def describe(settings: dict) -> str:
    a = settings["arch"]
    digest = f", weights {settings['digest'][:12]}" if settings.get("digest") else ""
    return (f"{settings['model']} ({a.get('num_layers')} layers, hidden {a.get('hidden_size')}, vocab "
            f"{a.get('vocab_size')}{digest})")


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
            flag = "--" + key.replace("_", "-")
            return f"{words} mismatch: server {flag} {server[key]}, client {flag} {other[key]}"
    return None


# --- during the session ------------------------------------------------------------------------------
class Peer:
    """Reads the other party's control messages in a thread. A closed connection, a malformed
    message or a stop message outside a clean /quit ends this process at once with one line (exit
    status 3): the peer is authenticated, so a bad message means a broken or hostile peer."""

    def __init__(self, channel: Channel, me: str, them: str):
        self.channel, self.me, self.them = channel, me, them
        self.inbox: queue.Queue = queue.Queue()
        self.closing = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            why = None
            try:
                msg = self.channel.recv(timeout=None)
                if msg is not None:
                    expect_op(msg)
            except ProtocolError as exc:
                msg, why = None, f"broke the control protocol ({exc})"
            except OSError:
                msg = None
            if msg is None or msg.get("op") == "stopped":
                if self.closing:
                    return
                why = why or (msg["why"] if msg else "disconnected (killed or crashed?)")
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
