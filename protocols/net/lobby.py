"""The chat's connection setup: who may talk on the control port, and how a party proves it.

The server listens; every connection gets its own handshake thread with one overall deadline
(:data:`~protocols.net.control.HANDSHAKE_S`), so a silent or slow stranger holds up nobody. A
connection first runs TLS 1.3 and proves its key (pinned with ``--peer-fingerprint`` /
``--expect-dealer``) or the session secret (``protocols.net.tls``: constant-time checks, bound to both
certificates), and only then is its hello read. Anything wrong — not TLS, a wrong key or secret,
not JSON, not an object, a message over the cap, a second client or dealer, a dealer the client
did not pin, a setting that does not match — is refused with one line to that connection (once
it can be read: after TLS) and one line on the server's stderr, and the server goes on waiting
for the right peer.

Keys: ``--key PATH`` (``mpcache keys PATH``) or a fresh ephemeral one per run; every party prints
its own fingerprint and its peers'. The session secret: ``MPCACHE_SESSION_SECRET`` (hex, >= 16
bytes) when set; else, unless pins cover every peer, the server makes one and leaves it in a file
only this user can read (``secret_path``), where a client or dealer on the same machine finds it
by itself. A remote party needs the secret given out of band (the server prints the line to
export) or pinned keys.
"""

from __future__ import annotations

import atexit
import hmac
import ipaddress
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mpcache.core.errors import RuntimeFault, say
from protocols.net import links, runtime, tls
from protocols.net.control import (
    HANDSHAKE_S,
    HELLO,
    PROGRESS_EVERY_S,
    SETTINGS,
    Channel,
    ProtocolError,
    expect,
    mismatch,
)

SECRET_ENV = tls.SECRET_ENV
SECRET_BYTES = 32
MAX_PENDING = 32  # handshakes at once; more connections are refused at once
PEERS = ("client", "dealer")


class Refused(Exception):
    """A connection the server turns away (the message goes to it, one line)."""


# --- the session secret --------------------------------------------------------------------------------
def secret_path(port: int) -> Path:
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or Path.home() / ".cache" / "mpcache")
    return base / "mpcache-chat" / f"port-{port}.secret"


def _from_env() -> bytes | None:
    text = os.environ.get(SECRET_ENV, "").strip()
    return tls.parse_secret(text) if text else None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def server_secret(host: str, port: int) -> bytes:
    """The server's secret: the environment's, or a fresh one left for local parties (0600)."""
    secret = _from_env()
    if secret is not None:
        return secret
    secret = secrets.token_bytes(SECRET_BYTES)
    path = secret_path(port)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_suffix(f".{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex())
    os.replace(tmp, path)  # a local client never reads half a secret
    _remove_at_exit(path, secret)
    if not is_loopback(host):
        say(f"[server: session secret for remote parties: export {SECRET_ENV}={secret.hex()}]")
    return secret


def _remove_at_exit(path: Path, secret: bytes) -> None:
    """A server that ends removes its secret file (if it is still its own), so a later client
    waits for the next server's instead of reading a stale one."""
    def remove(_message: str = "") -> None:
        try:
            if bytes.fromhex(path.read_text().strip()) == secret:
                path.unlink()
        except (OSError, ValueError):
            pass

    atexit.register(remove)
    runtime.on_exit(remove)


def party_secret(host: str, port: int, pinned: bool) -> bytes | None:
    """A client's or dealer's secret: the environment's, else (server on this machine) the file the
    server left; None while that file is not there yet, or when the server's key is ``pinned``."""
    secret = _from_env()
    if secret is not None or (pinned and not is_loopback(host)):
        return secret
    if not is_loopback(host):
        raise RuntimeFault(f"set {SECRET_ENV} to the session secret the server printed, or pin the "
                           "server's key with --peer-fingerprint")
    try:
        return bytes.fromhex(secret_path(port).read_text().strip())
    except (OSError, ValueError):
        return None


# --- identities -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Credentials:
    identity: tls.Identity
    trust: tls.Trust
    origin: str  # "ephemeral" or the key file


def identity(key: str | None) -> tuple[tls.Identity, str]:
    """This party's key, the same for the control channel and the MPC links (``links.identity``:
    one ephemeral key per process unless --key), so the fingerprint it prints is the one peers see."""
    if key:
        os.environ["MPCACHE_KEY"] = os.path.abspath(key)
    return links.identity(), key or os.environ.get("MPCACHE_KEY") or "ephemeral, this run only"


def _pins_for_links(pins: list[str], expect_dealer: str | None) -> None:
    """The MPC links (protocols.net.links) read their pins from the environment: the same as ours."""
    if pins:
        os.environ["MPCACHE_PEER_FINGERPRINT"] = ",".join(pins)
    if expect_dealer:
        os.environ["MPCACHE_EXPECT_DEALER"] = expect_dealer


def server_credentials(args, need_dealer: bool) -> Credentials:
    """The server's key and trust: pins from --peer-fingerprint (the client) and --expect-dealer;
    the session secret for every peer not pinned (the environment's or a local one)."""
    me, origin = identity(args.key)
    trust = tls.trust_from_env_and_flags("server", args.peer_fingerprint or "", args.expect_dealer)
    _pins_for_links([p for p in (args.peer_fingerprint or "").split(",") if p.strip()], args.expect_dealer)
    needed = {"client", "dealer"} if need_dealer else {"client"}
    if trust.secret is None and not needed <= set(trust.pins):
        trust = tls.Trust(secret=server_secret(args.addr, args.port), pins=trust.pins)
    return Credentials(me, trust, origin)


def party_credentials(args, role: str):
    """A function giving the client's or dealer's credentials, None while a local server's secret
    is not there yet. A bare --peer-fingerprint is the server's key."""
    me, origin = identity(args.key)
    pins = [p if "=" in p else f"server={p}" for p in (args.peer_fingerprint or "").split(",") if p.strip()]
    flags = tls.trust_from_env_and_flags(role, pins, getattr(args, "expect_dealer", None))
    _pins_for_links(pins, getattr(args, "expect_dealer", None))

    def get() -> Credentials | None:
        secret = party_secret(args.addr, args.port, "server" in flags.pins)
        if secret is None and "server" not in flags.pins:
            return None
        return Credentials(me, tls.Trust(secret=secret, pins=flags.pins), origin)

    return get


def show_keys(role: str, creds: Credentials) -> None:
    say(f"[{role}: my key {creds.identity.fingerprint} ({creds.origin})]")


# --- client / dealer side ----------------------------------------------------------------------------
def connect(host: str, port: int, hello: dict, timeout_s: float, creds_for) -> tuple[Channel, dict, str]:
    """Connect over TLS (retrying while the server is not up), authenticate both ways, send
    ``hello``; return the channel, the server's settings and its key fingerprint. Progress every
    10 s; RuntimeFault after ``timeout_s``, when refused or on a bad message."""
    start = last = time.monotonic()
    what = f"the server at {host}:{port}"
    role = hello["role"]

    def tick(state: str) -> float:
        nonlocal last
        now = time.monotonic()
        if now - start > timeout_s:
            raise RuntimeFault(f"gave up after {timeout_s:.0f} s {state} {what} (is it running, with "
                               "this --addr and --port? --connect-timeout sets the wait)")
        if now - last >= PROGRESS_EVERY_S:
            say(f"[{state} {what}... {now - start:.0f} s]")
            last = now
        return start + timeout_s - now

    say(f"[connecting to {what} ...]")
    shown = False
    while True:
        left = tick("waiting for")
        creds = creds_for()
        if creds is None:  # a local server has not left its secret yet
            time.sleep(0.5)
            continue
        if not shown:
            show_keys(role, creds)
            shown = True
        try:
            link = tls.connect((host, port), creds.identity, creds.trust, role, "server",
                               max(0.5, min(HANDSHAKE_S, left)))
            break
        except tls.LinkError as exc:
            if "refuses connections" not in str(exc) and "cannot reach" not in str(exc):
                raise RuntimeFault(f"{what}: {exc}") from None
    channel = Channel(link)
    say(f"[{role}: the server's key {link.peer_fingerprint}]")
    try:
        channel.send(hello)
        while True:
            try:
                reply = channel.recv(timeout=1.0)
            except TimeoutError:
                tick("waiting for an answer from")
                continue
            if reply is None:
                raise RuntimeFault(f"{what} closed the connection during the handshake")
            if "error" in reply:
                raise RuntimeFault(str(reply["error"])[:500])
            if reply.get("ok"):
                settings = expect(reply.get("settings") or {}, SETTINGS, "server settings")
                secret = tls.parse_secret(expect(reply, {"mpc_secret": str}, "ok message")["mpc_secret"])
                os.environ[SECRET_ENV] = secret.hex()  # the MPC links' secret (see Lobby)
                return channel, settings, link.peer_fingerprint
            say(f"[{str(reply.get('status', 'waiting'))[:200]}]")
    except BaseException:
        channel.close()
        raise


# --- server side -------------------------------------------------------------------------------------
@dataclass
class Seat:
    channel: Channel
    fingerprint: str
    hello: dict


class Lobby:
    """The server's listening socket: seats one client (and one dealer with TTP) that authenticate
    and agree on the settings; refuses every other connection with one line, and goes on."""

    def __init__(self, host: str, port: int, settings: dict, creds: Credentials):
        self.host, self.port, self.settings, self.creds = host, port, settings, creds
        self.seated: dict[str, Seat] = {}
        self.reached_at: str | None = None  # the server's address as the client reached it
        self.lock = threading.Lock()
        self.pending = threading.Semaphore(MAX_PENDING)
        self.needed: set[str] = set()
        self.busy = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            raise RuntimeFault(f"cannot listen on {host}:{port} ({exc.strerror}): choose another "
                               "--port") from None
        self.sock.listen(16)

    def wait_for_parties(self, need_dealer: bool) -> Channel:
        """Block (interruptibly) until the client and, if needed, the dealer are seated; from then
        on every new connection is refused (after authenticating: the refusal is readable)."""
        self.needed = {"client", "dealer"} if need_dealer else {"client"}
        self.sock.settimeout(0.5)
        while True:
            with self.lock:
                self._drop_leavers()
                if self.needed <= set(self.seated):
                    self.busy = True
                    break
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            self._spawn(conn, peer)
        dealer = self.seated.get("dealer")
        settings = dict(self.settings, dealer_fingerprint=dealer.fingerprint if dealer else None)
        # The MPC links (party-party, party-dealer) authenticate with a fresh secret that only the
        # parties seated here get, over this authenticated channel (pins, if given, hold as well).
        mpc_secret = secrets.token_hex(SECRET_BYTES)
        os.environ[SECRET_ENV] = mpc_secret
        for seat in self.seated.values():
            seat.channel.send({"ok": True, "settings": settings, "mpc_secret": mpc_secret})
        threading.Thread(target=self._refuse_forever, daemon=True).start()
        return self.seated["client"].channel

    def _drop_leavers(self) -> None:
        """A seated party says nothing until the session starts: data (or EOF) means it left."""
        for role, seat in list(self.seated.items()):
            if seat.channel._ready(0):
                del self.seated[role]
                seat.channel.close()
                say(f"[server: the {role} (key {seat.fingerprint[:16]}) left before the session began; "
                    "still waiting]")

    def _spawn(self, conn: socket.socket, peer) -> None:
        if not self.pending.acquire(blocking=False):
            conn.close()
            say(f"[server: refused a connection from {peer[0]}: too many handshakes at once]")
            return
        threading.Thread(target=self._greet, args=(conn, peer), daemon=True).start()

    def _greet(self, conn: socket.socket, peer) -> None:
        link = tls.SecureSocket(conn, tls._context(self.creds.identity, server=True), server=True)
        channel, who, authed = Channel(link), f"a connection from {peer[0]}", False
        try:
            deadline = time.monotonic() + HANDSHAKE_S
            tls._server_side(link, self.creds.identity, self.creds.trust, "server", PEERS, deadline)
            authed, role = True, link.peer_role
            who = f"a {role} from {peer[0]} (key {link.peer_fingerprint[:16]})"
            hello = channel.recv(deadline=deadline)
            if hello is None:
                raise Refused("closed the connection before its hello")
            expect(hello, HELLO[role], f"{role} hello")
            if hello["role"] != role:
                raise ProtocolError(f"a hello for {hello['role'][:20]!r} after authenticating as {role}")
            self._seat(Seat(channel, link.peer_fingerprint, hello), role, peer)
        except TimeoutError:
            self._refuse(channel, authed, who, f"no hello within {HANDSHAKE_S:.0f} s")
        except (Refused, RuntimeFault) as exc:
            self._refuse(channel, authed, who, str(exc))
        except OSError as exc:
            self._refuse(channel, authed, who, f"connection error ({exc.strerror or exc})")
        finally:
            self.pending.release()

    def _seat(self, seat: Seat, role: str, peer) -> None:
        with self.lock:
            if self.busy:
                raise Refused("the server is busy with another client; try again later")
            if role in self.seated:
                raise Refused(f"the server already has a {role}")
            if role not in self.needed:
                raise Refused("the server runs --dealer tfp and needs no dealer")
            problem = mismatch(self.settings, seat.hello)
            if problem:
                raise Refused(problem)
            client, dealer = self.seated.get("client"), self.seated.get("dealer")
            pin = (seat.hello if role == "client" else client.hello if client else {}).get("expect_dealer")
            dropped = None
            if pin and role == "dealer" and not _same(pin, seat.fingerprint):
                raise Refused(f"the client pins another dealer key (--expect-dealer {pin[:16]}...)")
            if pin and role == "client" and dealer and not _same(pin, dealer.fingerprint):
                dropped = self.seated.pop("dealer")  # the client's pin decides who deals
            self.seated[role] = seat
            if role == "client":
                self.reached_at = seat.channel.sock.getsockname()[0]
                say(f"[server: the MPC rendezvous will be {self.reached_at}:{self.port + 1} (the address the "
                    "client reached)]")
            missing = self.needed - set(self.seated)
            seats = list(self.seated.values())
        say(f"[server: {role} connected from {peer[0]}, key {seat.fingerprint}]")
        if dropped:
            self._refuse(dropped.channel, True, f"the seated dealer (key {dropped.fingerprint[:16]})",
                         f"the client pins another dealer key (--expect-dealer {pin[:16]}...)")
        if missing:
            status = f"connected to the server; waiting for the {' and the '.join(sorted(missing))}"
            for other in seats:
                other.channel.try_send({"status": status})

    def _refuse(self, channel: Channel, authed: bool, who: str, reason: str) -> None:
        if authed:  # before that the peer cannot read us (not TLS) or tls told it already
            channel.try_send({"error": f"refused by the server: {reason}"})
        channel.close()
        then = "the chat goes on" if self.busy else "still waiting"
        say(f"[server: refused {who}: {reason}; {then}]")

    def _refuse_forever(self) -> None:
        self.sock.settimeout(None)
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self._spawn(conn, peer)


def _same(pin: str, fingerprint: str) -> bool:
    try:
        return hmac.compare_digest(tls.normalize_fp(pin), fingerprint)
    except RuntimeFault:
        return False
