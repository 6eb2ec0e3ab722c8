"""This process's side of the links: its key, whom it trusts, where it listens, what it publishes.

Configured by the environment, which the launch flags set (``add_flags`` / ``apply_flags``) and
torchrun hands to every local party:

  MPCACHE_KEY               path of this party's key (``mpcache keys PATH``); default: ephemeral
  MPCACHE_PEER_FINGERPRINT  pinned peer key(s): "FP" (the other party) or "role=FP", comma-separated
  MPCACHE_EXPECT_DEALER     the TTP dealer's fingerprint (the client refuses any other dealer)
  MPCACHE_SESSION_SECRET    hex, given to all parties out of band; local launches make one
  MPCACHE_INSECURE=1        bench only: plain sockets (no TLS), for the cost-of-privacy comparison
  MPCACHE_INSECURE_NETWORK=1  allow a non-loopback rendezvous while something secret is on gloo
  MPCACHE_SHOW_FINGERPRINTS=1  print key fingerprints on a local run too (else: when keys or pins
                            are given, or the rendezvous is not loopback)
  MPCACHE_LINK_PORT / MPCACHE_DEALER_PORT          fixed listening ports (default: any free one)
  MPCACHE_LINK_ADVERTISE / MPCACHE_DEALER_ADVERTISE  "host:port" to publish instead (NAT, relays)

Addresses go through torchrun's TCPStore (public information; first writer wins, so a second
dealer cannot take the seat). The store and gloo carry no secret: rendezvous and barriers only.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import secrets
import socket
import sys
import time
from functools import lru_cache

import torch
import torch.distributed as dist

from mpcache.core.errors import RuntimeFault, say
from protocols.net import tls
from protocols.net.tlsio import PlainSocket, SecureSocket

ROLE_OF_RANK = {0: "server", 1: "client", 2: "dealer"}


def add_flags(parser: argparse.ArgumentParser, bench: bool = False) -> None:
    g = parser.add_argument_group("links (authentication of the parties; see `mpcache keys`)")
    g.add_argument("--key", metavar="PATH", help="this party's key (default: an ephemeral one)")
    g.add_argument("--peer-fingerprint", metavar="FP", action="append",
                   help="pin the other party's key (ROLE=FP for the dealer); repeatable")
    g.add_argument("--expect-dealer", metavar="FP", help="refuse any TTP dealer but the one with this key")
    g.add_argument("--insecure-network", action="store_true",
                   help="allow a non-loopback rendezvous while something secret still passes gloo")
    if bench:
        g.add_argument("--insecure", action="store_true",
                       help="cost-of-privacy baseline only: plain sockets and the old MT19937 generator "
                            "(records say insecure: true)")


def apply_flags(args) -> None:
    """Hand the flags to the parties through the environment (torchrun passes it on)."""
    if getattr(args, "key", None):
        os.environ["MPCACHE_KEY"] = os.path.abspath(args.key)
        tls.load(args.key)  # a bad key: one line before anything starts
    if getattr(args, "peer_fingerprint", None):
        os.environ["MPCACHE_PEER_FINGERPRINT"] = ",".join(args.peer_fingerprint)
    if getattr(args, "expect_dealer", None):
        os.environ["MPCACHE_EXPECT_DEALER"] = args.expect_dealer
    if getattr(args, "insecure_network", False):
        os.environ["MPCACHE_INSECURE_NETWORK"] = "1"
    if getattr(args, "insecure", False):
        os.environ["MPCACHE_INSECURE"] = "1"
        os.environ["MPCACHE_INSECURE_RNG"] = "mt19937"
    tls.trust_from_env_and_flags("client")  # malformed fingerprints / secret: fail before launching


def apply_flags_or_exit(args) -> None:
    """``apply_flags`` for scripts: a bad key or fingerprint is one line and exit status 2."""
    try:
        apply_flags(args)
    except RuntimeFault as exc:
        say(f"mpcache: error: {exc}")
        sys.exit(2)


def ensure_local_secret() -> None:
    """Local launches (all parties on this machine): an ephemeral session secret, made here."""
    os.environ.setdefault(tls.SECRET_ENV, secrets.token_hex(32))


def insecure() -> bool:
    return os.environ.get("MPCACHE_INSECURE") == "1"


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def check_network(secret_on_gloo: bool) -> None:
    """A non-loopback rendezvous with anything secret still on gloo needs --insecure-network."""
    master = os.environ.get("MASTER_ADDR", "127.0.0.1")
    if secret_on_gloo and not loopback(master) and os.environ.get("MPCACHE_INSECURE_NETWORK") != "1":
        raise RuntimeFault(f"the rendezvous {master} is not loopback and secret values would still pass "
                           "gloo in the clear (plain sockets or MT19937 seeds); refused (--insecure-network "
                           "to allow it)")


@lru_cache(maxsize=1)
def identity() -> tls.Identity:
    path = os.environ.get("MPCACHE_KEY")
    return tls.load(path) if path else tls.ephemeral()


def trust(role: str) -> tls.Trust:
    return tls.trust_from_env_and_flags(role)


def show_fingerprints() -> bool:
    """Whether to print key fingerprints: always, except for a local run on ephemeral keys (where
    they mean nothing and nobody pins them; MPCACHE_SHOW_FINGERPRINTS=1 forces them)."""
    configured = any(os.environ.get(k) for k in ("MPCACHE_KEY", "MPCACHE_PEER_FINGERPRINT",
                                                 "MPCACHE_EXPECT_DEALER", "MPCACHE_SHOW_FINGERPRINTS"))
    return configured or not loopback(os.environ.get("MASTER_ADDR", "127.0.0.1"))


def say_peer(my_role: str, s) -> None:
    if show_fingerprints():
        say(f"mpcache: {my_role}: {s.peer_role} authenticated, key fingerprint {s.peer_fingerprint}")


def say_self(my_role: str) -> None:
    if show_fingerprints():
        say(f"mpcache: {my_role}: my key fingerprint {identity().fingerprint}")


# --- the store and addresses ----------------------------------------------------------------------------
def store():
    return dist.distributed_c10d._get_default_store()


def publish(name: str, value: str) -> str:
    """Set ``name`` unless it is set (first writer wins); returns the value that holds."""
    held = store().compare_set(f"mpcache/{name}", "", value)
    return held.decode() if isinstance(held, bytes) else str(held)


def lookup(name: str, timeout_s: float) -> str:
    s = store()
    try:
        s.wait([f"mpcache/{name}"], datetime.timedelta(seconds=timeout_s))
    except RuntimeError:
        raise RuntimeFault(f"no {name} address was published within {timeout_s:.0f} s") from None
    return s.get(f"mpcache/{name}").decode()


def split_addr(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    try:
        return host, int(port)
    except ValueError:
        raise RuntimeFault(f"a malformed address was published: {value[:80]!r}") from None


def route_ip() -> str:
    """This machine's address towards the rendezvous (what a remote peer can reach)."""
    master = os.environ.get("MASTER_ADDR", "127.0.0.1")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((master, 9))  # no packet is sent: this only picks the route
        return probe.getsockname()[0]
    finally:
        probe.close()


def listen(kind: str) -> tuple[socket.socket, str]:
    """A listener for ``kind`` ("link" or "dealer") and the "host:port" to publish."""
    port = int(os.environ.get(f"MPCACHE_{kind.upper()}_PORT", "0"))
    host = route_ip()
    bind = "127.0.0.1" if loopback(host) else "0.0.0.0"  # noqa: S104 - peers authenticate in TLS
    listener = socket.create_server((bind, port), reuse_port=False)
    advertised = os.environ.get(f"MPCACHE_{kind.upper()}_ADVERTISE") or f"{host}:{listener.getsockname()[1]}"
    return listener, advertised


def reachable(addr: tuple[str, int]) -> tuple[str, int]:
    """A loopback address published by a remote peer: use the rendezvous host instead."""
    master = os.environ.get("MASTER_ADDR", "127.0.0.1")
    if loopback(addr[0]) and not loopback(master):
        return master, addr[1]
    return addr


# --- seats: publish an address, accept the authenticated peers; dial a published address ---------------
def offer(name: str, me: str, roles: tuple[str, ...], timeout_s: float) -> dict[str, SecureSocket]:
    """Listen, publish under ``name`` (first writer wins: a second one is refused) and accept one
    authenticated peer per role, in any order, within ``timeout_s``."""
    listener, advertised = listen("dealer" if name == "dealer" else "link")
    token = secrets.token_hex(16) if insecure() else ""
    value = advertised + (f"#{token}" if token else "")
    held = publish(name, value)
    if held != value:
        listener.close()
        raise tls.AuthError(f"another {me} already holds the seat at {held.partition('#')[0]}; "
                            "this one is refused")
    if not token:
        with listener:
            seated = tls.accept_each(listener, identity(), trust(me), me, roles, timeout_s)
        for role in roles:
            say_peer(me, seated[role])
        return seated
    deadline = time.monotonic() + timeout_s
    seated = {}
    with listener:
        while len(seated) < len(roles):
            sock = _accept_plain(listener, token, tuple(r for r in roles if r not in seated), deadline)
            seated[sock.peer_role] = sock
    return seated


def dial(name: str, me: str, peer: str, timeout_s: float) -> SecureSocket:
    value, _, token = lookup(name, timeout_s).partition("#")
    addr = reachable(split_addr(value))
    if insecure():
        sock = socket.create_connection(addr, timeout=timeout_s)
        sock.sendall(token.encode() + me.encode().ljust(8))
        return PlainSocket(sock, peer)
    s = tls.connect(addr, identity(), trust(me), me, peer, timeout_s)
    say_peer(me, s)
    return s


def _accept_plain(listener, token: str, roles, deadline: float) -> PlainSocket:
    """The insecure bench's accept: a one-time token from the store, then the role."""
    listener.settimeout(max(0.1, deadline - time.monotonic()))
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            raise RuntimeFault(f"no {' or '.join(roles)} connected in time") from None
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            got = conn.recv(len(token) + 8, socket.MSG_WAITALL).decode(errors="replace")
        except OSError:
            got = ""
        role = got[len(token):].strip()
        if got[:len(token)] == token and role in roles:
            s = PlainSocket(conn, role)
            s.peer_role = role
            return s
        conn.close()
        say("mpcache: refused a connection without the session token")


# --- tagged JSON (tuples, sizes and non-string keys survive the trip; never pickle) -------------------
def encode(obj):
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, torch.Size):
        return {"s": [int(n) for n in obj]}
    if isinstance(obj, tuple):
        return {"t": [encode(x) for x in obj]}
    if isinstance(obj, list):
        return [encode(x) for x in obj]
    if isinstance(obj, dict):
        return {"d": [[encode(k), encode(v)] for k, v in obj.items()]}
    raise TypeError(f"{type(obj).__name__} cannot go on the link")


def decode(obj):
    if isinstance(obj, list):
        return [decode(x) for x in obj]
    if isinstance(obj, dict):
        if "s" in obj:
            return torch.Size(obj["s"])
        if "t" in obj:
            return tuple(decode(x) for x in obj["t"])
        if "d" in obj:
            return {decode(k): decode(v) for k, v in obj["d"]}
        raise RuntimeFault("a malformed object arrived on a link")
    return obj


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor (the wire format: raw little-endian values)."""
    if sys.byteorder != "little":
        raise RuntimeFault("the links' wire format is little-endian; this machine is not")
    return memoryview(t.reshape(-1).numpy()).cast("B")
