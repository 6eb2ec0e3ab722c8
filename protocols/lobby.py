"""The chat's connection setup: who may talk on the control port, and how a party proves it.

The server listens; every connection gets its own handshake thread with one overall deadline
(:data:`~protocols.control.HANDSHAKE_S`), so a silent or slow stranger holds up nobody. A
connection first proves the session secret (:class:`SecretAuth`: HMAC-SHA256 over both sides'
nonces, compared in constant time; the server proves it back), and only then is its hello read.
Anything wrong — not JSON, not an object, a line over the cap, a wrong secret, a second client or
dealer, a setting that does not match — is refused with one line to that connection and one line
on the server's stderr, and the server goes on waiting for the right peer.

The session secret: ``MPCACHE_SESSION_SECRET`` (hex, >= 16 bytes) when set; else the server makes
one and leaves it in a file only this user can read (``secret_path``), where a client or dealer
on the same machine finds it by itself. A remote party needs the secret given out of band (the
server prints the line to export).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from protocols.control import (
    HANDSHAKE_S,
    HELLO,
    PROGRESS_EVERY_S,
    SETTINGS,
    Channel,
    ProtocolError,
    expect,
    mismatch,
    say,
)
from protocols.runtime import RuntimeFault

SECRET_ENV = "MPCACHE_SESSION_SECRET"
SECRET_BYTES = 32
MAX_PENDING = 8  # handshakes at once; more connections are refused at once


class AuthError(RuntimeFault):
    """The peer could not prove the session secret."""


class Refused(Exception):
    """A connection the server turns away (the message goes to it, one line)."""


# --- the session secret --------------------------------------------------------------------------------
def secret_path(port: int) -> Path:
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or Path.home() / ".cache" / "mpcache")
    return base / "mpcache-chat" / f"port-{port}.secret"


def _from_env() -> bytes | None:
    text = os.environ.get(SECRET_ENV, "").strip()
    if not text:
        return None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise RuntimeFault(f"{SECRET_ENV} must be hex") from None
    if len(secret) < 16:
        raise RuntimeFault(f"{SECRET_ENV} must hold at least 16 bytes (32 hex digits)")
    return secret


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
    if not is_loopback(host):
        say(f"[server: session secret for remote parties: export {SECRET_ENV}={secret.hex()}]")
    return secret


def party_secret(host: str, port: int) -> bytes | None:
    """A client's or dealer's secret: the environment's, else (server on this machine) the file the
    server left; None while that file is not there yet."""
    secret = _from_env()
    if secret is not None:
        return secret
    if not is_loopback(host):
        raise RuntimeFault(f"set {SECRET_ENV} to the session secret the server printed (a remote "
                           "server's secret is given out of band)")
    try:
        return bytes.fromhex(secret_path(port).read_text().strip())
    except (OSError, ValueError):
        return None


# --- proving the secret (the seam a TLS transport replaces) --------------------------------------------
def _proof(secret: bytes, who: str, server_nonce: str, party_nonce: str, role: str) -> str:
    data = "|".join(("mpcache-control", who, server_nonce, party_nonce, role)).encode()
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


def _error(msg: dict | None) -> None:
    if msg is None:
        raise RuntimeFault("the server closed the connection during the handshake")
    if "error" in msg:
        raise RuntimeFault(str(msg["error"])[:500])


class SecretAuth:
    """Mutual proof of the session secret: nonce from the server, nonce + proof from the party,
    proof back from the server (each over both nonces and the role: no replay, no reflection)."""

    def __init__(self, secret: bytes | None):
        self.secret = secret

    def server(self, sock: socket.socket, deadline: float) -> tuple[Channel, str]:
        channel = Channel(sock)
        nonce = secrets.token_hex(16)
        channel.send({"challenge": nonce})
        msg = channel.recv(deadline=deadline)
        if msg is None:
            raise Refused("closed the connection before authenticating")
        expect(msg, {"role": str, "nonce": str, "proof": str}, "authentication")
        role = msg["role"]
        if role not in HELLO:
            raise ProtocolError(f"unknown role {role[:20]!r}")
        want = _proof(self.secret, "party", nonce, msg["nonce"][:64], role)
        if not hmac.compare_digest(want.encode(), msg["proof"].encode()):
            raise AuthError("authentication failed: wrong session secret")
        channel.send({"proof": _proof(self.secret, "server", nonce, msg["nonce"][:64], role)})
        return channel, role

    def client(self, sock: socket.socket, role: str, deadline: float) -> Channel:
        channel = Channel(sock)
        msg = channel.recv(deadline=deadline)
        _error(msg)
        nonce = expect(msg, {"challenge": str}, "challenge")["challenge"][:64]
        mine = secrets.token_hex(16)
        channel.send({"role": role, "nonce": mine, "proof": _proof(self.secret, "party", nonce, mine, role)})
        msg = channel.recv(deadline=deadline)
        _error(msg)
        want = _proof(self.secret, "server", nonce, mine, role)
        got = expect(msg, {"proof": str}, "server proof")["proof"]
        if not hmac.compare_digest(want.encode(), got.encode()):
            raise AuthError("the server could not prove the session secret (not our server?)")
        return channel


# --- client / dealer side ----------------------------------------------------------------------------
def connect(host: str, port: int, hello: dict, timeout_s: float, auth_for) -> tuple[Channel, dict]:
    """Connect (retrying while the server is not up), prove the secret, send ``hello``, return the
    server's settings. ``auth_for()`` gives the authenticator (None: no secret yet, retry).
    Progress every 10 s; RuntimeFault after ``timeout_s``, when refused or on a bad message."""
    start = last = time.monotonic()
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
            auth = auth_for()  # after connecting: a local server leaves its secret before it listens
            if auth is not None:
                break
            sock.close()
        except OSError:
            pass
        tick("waiting for")
        time.sleep(0.5)
    try:
        channel = auth.client(sock, hello["role"], time.monotonic() + HANDSHAKE_S)
        channel.send(hello)
        while True:
            try:
                reply = channel.recv(timeout=1.0)
            except TimeoutError:
                tick("waiting for an answer from")
                continue
            _error(reply)
            if reply.get("ok"):
                return channel, expect(reply.get("settings") or {}, SETTINGS, "server settings")
            say(f"[{str(reply.get('status', 'waiting'))[:200]}]")
    except TimeoutError:
        sock.close()
        raise RuntimeFault(f"{what} did not complete the handshake within {HANDSHAKE_S:.0f} s") from None
    except OSError as exc:
        sock.close()
        raise RuntimeFault(f"{what} broke the connection during the handshake ({exc})") from None


# --- server side -------------------------------------------------------------------------------------
class Lobby:
    """The server's listening socket: seats one client (and one dealer with TTP) that prove the
    secret and agree on the settings; refuses every other connection with one line, and goes on."""

    def __init__(self, host: str, port: int, settings: dict, auth: SecretAuth):
        self.host, self.port, self.settings, self.auth = host, port, settings, auth
        self.seated: dict[str, Channel] = {}
        self.reached_at: str | None = None  # the server's address as the client reached it
        self.lock = threading.Lock()
        self.pending = threading.Semaphore(MAX_PENDING)
        self.needed: set[str] = set()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            raise RuntimeFault(f"cannot listen on {host}:{port} ({exc.strerror}): choose another "
                               "--port") from None
        self.sock.listen(16)

    def wait_for_parties(self, need_dealer: bool) -> Channel:
        """Block (interruptibly) until the client and, if needed, the dealer are seated."""
        self.needed = {"client", "dealer"} if need_dealer else {"client"}
        self.sock.settimeout(0.5)
        while True:
            with self.lock:
                if self.needed <= set(self.seated):
                    break
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            if not self.pending.acquire(blocking=False):
                _turn_away(conn, peer, "too many connections at once; try again")
                continue
            threading.Thread(target=self._greet, args=(conn, peer), daemon=True).start()
        for channel in self.seated.values():
            channel.send({"ok": True, "settings": self.settings})
        threading.Thread(target=self._refuse_forever, daemon=True).start()
        return self.seated["client"]

    def _greet(self, conn: socket.socket, peer) -> None:
        channel, who = Channel(conn), "a connection"
        try:
            deadline = time.monotonic() + HANDSHAKE_S
            channel, role = self.auth.server(conn, deadline)
            who = f"a {role}"
            hello = channel.recv(deadline=deadline)
            if hello is None:
                raise Refused("closed the connection before its hello")
            expect(hello, HELLO[role], f"{role} hello")
            if hello["role"] != role:
                raise ProtocolError(f"a hello for {hello['role'][:20]!r} after authenticating as {role}")
            self._seat(channel, role, hello, peer)
        except TimeoutError:
            self._refuse(channel, who, peer, f"no authentication and hello within {HANDSHAKE_S:.0f} s")
        except (Refused, RuntimeFault) as exc:
            self._refuse(channel, who, peer, str(exc))
        except OSError as exc:
            self._refuse(channel, who, peer, f"connection error ({exc.strerror or exc})")
        finally:
            self.pending.release()

    def _seat(self, channel: Channel, role: str, hello: dict, peer) -> None:
        with self.lock:
            if role in self.seated:
                raise Refused(f"the server already has a {role}")
            if role not in self.needed:
                raise Refused("the server runs --dealer tfp and needs no dealer")
            problem = mismatch(self.settings, hello)
            if problem:
                raise Refused(problem)
            self.seated[role] = channel
            if role == "client":
                self.reached_at = channel.sock.getsockname()[0]
            missing = self.needed - set(self.seated)
            seated = list(self.seated.values())
        say(f"[server: {role} connected from {peer[0]}]")
        if missing:
            status = f"connected to the server; waiting for the {' and the '.join(sorted(missing))}"
            for other in seated:
                other.try_send({"status": status})

    def _refuse(self, channel: Channel, who: str, peer, reason: str) -> None:
        channel.try_send({"error": f"refused by the server: {reason}"})
        channel.close()
        say(f"[server: refused {who} from {peer[0]}: {reason}; still waiting]")

    def _refuse_forever(self) -> None:
        self.sock.settimeout(None)
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            _turn_away(conn, peer, "the server is busy with another client; try again later")


def _turn_away(conn: socket.socket, peer, reason: str) -> None:
    channel = Channel(conn)
    channel.try_send({"error": reason}, timeout=0.5)
    channel.close()
    say(f"[server: refused a connection from {peer[0]}: {reason}]")
