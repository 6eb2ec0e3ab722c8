"""Authenticated, encrypted links between the parties and the dealer (TLS 1.3, Python ``ssl``).

The TLS layer encrypts; it does not decide who the peer is (CERT_NONE, no hostname: every key is
self-signed Ed25519). Right after the TLS handshake both sides authenticate *inside* the channel:

  client -> server  {"role", "pub", "nonce"}            (the client's raw public key)
  server -> client  {"role", "nonce", "sig", "mac"}     (server's proof)
  client -> server  {"sig", "mac"}                      (client's proof)
  server -> client  {"ok": true} or {"ok": false, "error"}

Both proofs cover one transcript: both roles, the fingerprint of the server's TLS certificate *as
each side sees it* (the server: its own; the client: the one TLS showed it), the client's
fingerprint and both nonces. ``sig`` is an Ed25519 signature with the identity key (always
checked: the fingerprint a party prints is the key that signed), ``mac`` an HMAC with the session
secret. A peer whose role is pinned (``Trust.pins``) must hold the pinned key; otherwise it must
know the session secret. A relay that terminates TLS on both sides shows the client its own
certificate, so the transcripts differ and both proofs fail.

Transport: ``protocols.net.tlsio.SecureSocket`` (SSLObject + MemoryBIO, one thread, absolute deadlines).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import queue
import secrets
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from mpcache.core.errors import RuntimeFault, say
from protocols.net.tlsio import MAX_MSG, LinkError, SecureSocket, deadline_in

__all__ = ["MAX_MSG", "AuthError", "Identity", "LinkError", "SecureSocket", "Trust", "accept", "accept_each",
           "connect", "deadline_in", "ephemeral", "load", "make", "trust_from_env_and_flags"]

HANDSHAKE_S = 10.0  # one connection's handshake, at most (a silent stranger is dropped after it)
SECRET_ENV = "MPCACHE_SESSION_SECRET"
_LABEL = b"mpcache-link-v1\0"


class AuthError(RuntimeFault):
    """The peer could not be authenticated, or broke the handshake's rules (one line)."""


# --- identities -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    private_key: ed25519.Ed25519PrivateKey
    cert_pem: bytes
    fingerprint: str  # sha256 of the raw public key, hex

    def key_pem(self) -> bytes:
        return self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())

    def public_raw(self) -> bytes:
        return _raw(self.private_key.public_key())


def _raw(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


def _identity(key: ed25519.Ed25519PrivateKey) -> Identity:
    """A self-signed certificate for ``key`` (made fresh: only the key is the identity)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mpcache")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, None))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return Identity(key, pem, fingerprint_of(_raw(key.public_key())))


def ephemeral() -> Identity:
    return _identity(ed25519.Ed25519PrivateKey.generate())


def make(path) -> Identity:
    """A new key pair in ``path`` (PEM, mode 0600; an existing file is never overwritten)."""
    identity = ephemeral()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(identity.key_pem())
    return identity


def load(path) -> Identity:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read the key {path}: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise AuthError(f"{path} is not an Ed25519 key (make one with `mpcache keys PATH`)")
    return _identity(key)


def normalize_fp(fp: str) -> str:
    fp = fp.strip().lower().replace(":", "")
    if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
        raise AuthError(f"not a key fingerprint (64 hex digits): {fp[:80]!r}")
    return fp


def short(fp: str) -> str:
    return fp[:16]


# --- trust ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trust:
    """How peers are authenticated: a pinned fingerprint for the role, else the session secret."""

    secret: bytes | None = None
    pins: dict[str, str] = field(default_factory=dict)

    def usable_for(self, role: str) -> bool:
        return self.secret is not None or role in self.pins


def parse_secret(text: str) -> bytes:
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        raise AuthError(f"{SECRET_ENV} must be hex") from None
    if len(secret) < 16:
        raise AuthError(f"{SECRET_ENV} must hold at least 16 bytes (32 hex digits)")
    return secret


def trust_from_env_and_flags(my_role: str, peer_fingerprints=None, expect_dealer: str | None = None,
                             env=None) -> Trust:
    """``peer_fingerprints``: "FP" (the other party: server <-> client) or "role=FP", a string
    (comma-separated) or a list; default the env MPCACHE_PEER_FINGERPRINT. ``expect_dealer``:
    the dealer's fingerprint (default env MPCACHE_EXPECT_DEALER)."""
    env = os.environ if env is None else env
    secret = parse_secret(env[SECRET_ENV]) if env.get(SECRET_ENV) else None
    if peer_fingerprints is None:
        peer_fingerprints = env.get("MPCACHE_PEER_FINGERPRINT", "")
    if isinstance(peer_fingerprints, str):
        peer_fingerprints = [p for p in peer_fingerprints.split(",") if p.strip()]
    pins: dict[str, str] = {}
    for item in peer_fingerprints:
        role, _, fp = item.rpartition("=")
        if not role:
            role = {"server": "client", "client": "server"}.get(my_role, "")
            if not role:
                raise AuthError(f"the {my_role} needs --peer-fingerprint ROLE=FP (server=... / client=...)")
        pins[role.strip()] = normalize_fp(fp)
    expect_dealer = expect_dealer or env.get("MPCACHE_EXPECT_DEALER") or None
    if expect_dealer:
        pins["dealer"] = normalize_fp(expect_dealer)
    return Trust(secret=secret, pins=pins)


# --- TLS contexts -----------------------------------------------------------------------------------
_contexts: dict[tuple[str, bool], ssl.SSLContext] = {}


def _context(identity: Identity, server: bool) -> ssl.SSLContext:
    key = (identity.fingerprint, server)
    if key not in _contexts:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # peers are authenticated inside the channel (module doc)
        if server:
            ctx.num_tickets = 0  # no resumption: tickets would only add traffic
            with tempfile.TemporaryDirectory() as folder:  # load_cert_chain reads files only
                path = os.path.join(folder, "id.pem")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(identity.key_pem() + identity.cert_pem)
                ctx.load_cert_chain(path)
        _contexts[key] = ctx
    return _contexts[key]


# --- authentication inside the channel --------------------------------------------------------------
def _transcript(server_role, client_role, server_fp, client_fp, c_nonce, s_nonce) -> bytes:
    return _LABEL + json.dumps([server_role, client_role, server_fp, client_fp, c_nonce, s_nonce]).encode()


def _proof(identity: Identity, trust: Trust, label: bytes, transcript: bytes) -> dict:
    mac = hmac.new(trust.secret, label + transcript, hashlib.sha256).hexdigest() if trust.secret else ""
    return {"sig": identity.private_key.sign(label + transcript).hex(), "mac": mac}


def _str(msg: dict, key: str, limit: int = 256) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise AuthError(f"malformed handshake: field {key!r}")
    return value


def _check(trust: Trust, role: str, public_raw: bytes, msg: dict, label: bytes, transcript: bytes) -> None:
    """The peer's proof: its key signed the transcript; it holds the pinned key or knows the secret."""
    fp = fingerprint_of(public_raw)
    try:
        sig = bytes.fromhex(_str(msg, "sig"))
        ed25519.Ed25519PublicKey.from_public_bytes(public_raw).verify(sig, label + transcript)
    except (ValueError, InvalidSignature):
        raise AuthError(f"the {role} did not prove possession of its key {short(fp)}") from None
    pin = trust.pins.get(role)
    if pin is not None and not hmac.compare_digest(pin, fp):
        raise AuthError(f"the {role}'s key {short(fp)} is not the pinned {short(pin)}")
    if trust.secret is not None:
        expected = hmac.new(trust.secret, label + transcript, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, _str(msg, "mac")):
            raise AuthError(f"the {role} does not know the session secret (or a relay sits between us)")
    elif pin is None:
        raise AuthError(f"no pinned fingerprint or session secret to authenticate the {role}")


def _server_side(s: SecureSocket, identity: Identity, trust: Trust, my_role: str, peer_roles, deadline,
                 claim=lambda role: True) -> None:
    """The accepting side; ``claim(role)`` (after the proofs) says whether the seat is still free."""
    s.handshake(deadline)
    hello = s.recv_msg(4096, deadline)
    role = _str(hello, "role", 32)
    if role not in peer_roles:
        raise AuthError(f"a peer claiming role {role[:32]!r} (expected {' or '.join(peer_roles)})")
    s.peer_name = role
    try:
        pub = bytes.fromhex(_str(hello, "pub"))
        ed25519.Ed25519PublicKey.from_public_bytes(pub)
    except ValueError:
        raise AuthError("malformed handshake: public key") from None
    c_nonce, s_nonce = _str(hello, "nonce", 64), secrets.token_hex(16)
    t = _transcript(my_role, role, identity.fingerprint, fingerprint_of(pub), c_nonce, s_nonce)
    s.send_msg({"role": my_role, "nonce": s_nonce, **_proof(identity, trust, b"server\0", t)}, deadline)
    answer = s.recv_msg(4096, deadline)
    if "error" in answer:
        raise AuthError(f"the {role} refused us: {str(answer['error'])[:200]}")
    try:
        _check(trust, role, pub, answer, b"client\0", t)
        if not claim(role):
            raise AuthError(f"a {role} is already connected (a second {role} is refused)")
    except AuthError as exc:
        try:
            s.send_msg({"ok": False, "error": str(exc)}, deadline)
        except RuntimeFault:
            pass
        raise
    s.send_msg({"ok": True}, deadline)
    s.peer_role, s.peer_fingerprint = role, fingerprint_of(pub)


def connect(addr, identity: Identity, trust: Trust, my_role: str, peer_role: str,
            timeout_s: float) -> SecureSocket:
    """Connect to ``addr`` (host, port), run TLS and prove each other's identity (module doc)."""
    deadline = time.monotonic() + timeout_s
    if not trust.usable_for(peer_role):
        raise AuthError(f"no pinned fingerprint or session secret to authenticate the {peer_role}")
    while True:
        try:
            sock = socket.create_connection(tuple(addr), timeout=max(0.1, deadline - time.monotonic()))
            break
        except ConnectionRefusedError:
            if time.monotonic() + 0.2 >= deadline:
                raise LinkError(f"the {peer_role} refuses connections at {addr[0]}:{addr[1]}") from None
            time.sleep(0.2)
        except OSError as exc:
            raise LinkError(f"cannot reach the {peer_role} at {addr[0]}:{addr[1]} ({exc})") from None
    s = SecureSocket(sock, _context(identity, server=False), server=False, peer_name=peer_role)
    try:
        s.handshake(deadline)
        der = s.obj.getpeercert(binary_form=True)
        pub = _raw(x509.load_der_x509_certificate(der).public_key())
        c_nonce = secrets.token_hex(16)
        s.send_msg({"role": my_role, "pub": identity.public_raw().hex(), "nonce": c_nonce}, deadline)
        reply = s.recv_msg(4096, deadline)
        role = _str(reply, "role", 32)
        if role != peer_role:
            raise AuthError(f"the peer at {addr[0]}:{addr[1]} is a {role[:32]!r}, not the {peer_role}")
        s_nonce = _str(reply, "nonce", 64)
        t = _transcript(role, my_role, fingerprint_of(pub), identity.fingerprint, c_nonce, s_nonce)
        try:
            _check(trust, peer_role, pub, reply, b"server\0", t)
        except AuthError as exc:  # tell the server why, so both sides print the reason
            s.send_msg({"error": str(exc)}, deadline)
            raise
        s.send_msg(_proof(identity, trust, b"client\0", t), deadline)
        verdict = s.recv_msg(4096, deadline)
        if verdict.get("ok") is not True:
            raise AuthError(f"the {peer_role} refused us: {str(verdict.get('error', '?'))[:200]}")
    except BaseException:
        s.close()
        raise
    s.peer_role, s.peer_fingerprint = peer_role, fingerprint_of(pub)
    return s


def accept(listener: socket.socket, identity: Identity, trust: Trust, my_role: str, peer_role: str,
           deadline_s: float, handshake_s: float = HANDSHAKE_S) -> SecureSocket:
    """Accept connections until the peer of ``peer_role`` authenticates, within ``deadline_s``.
    Handshakes run side by side (a silent stranger cannot hold the door); each refused connection
    gets one line on stderr, and the listener goes on."""
    return accept_each(listener, identity, trust, my_role, (peer_role,), deadline_s, handshake_s)[peer_role]


def accept_each(listener: socket.socket, identity: Identity, trust: Trust, my_role: str, roles,
                deadline_s: float, handshake_s: float = HANDSHAKE_S) -> dict[str, SecureSocket]:
    """``accept`` for several peers, one per role, arriving in any order; a second peer of a
    seated role is refused."""
    roles = tuple(roles)
    for role in roles:
        if not trust.usable_for(role):
            raise AuthError(f"no pinned fingerprint or session secret to authenticate the {role}")
    deadline = time.monotonic() + deadline_s
    won: queue.Queue[SecureSocket] = queue.Queue()
    seats = {role: threading.Lock() for role in roles}  # taken by the first authenticated peer, kept

    def handle(conn: socket.socket, where: str) -> None:
        s = SecureSocket(conn, _context(identity, server=True), server=True, peer_name="peer")
        try:
            _server_side(s, identity, trust, my_role, roles, min(deadline, time.monotonic() + handshake_s),
                         claim=lambda role: seats[role].acquire(blocking=False))
        except Exception as exc:  # noqa: BLE001 - every refusal is one line; the listener goes on
            s.close()
            say(f"mpcache: {my_role}: refused a connection from {where}: {exc}")
            return
        won.put(s)

    seated: dict[str, SecureSocket] = {}
    listener.settimeout(0.1)
    while True:
        while not won.empty():
            s = won.get_nowait()
            seated[s.peer_role] = s
        if len(seated) == len(roles):
            return seated
        if time.monotonic() >= deadline:
            for s in seated.values():
                s.close()
            missing = " or ".join(r for r in roles if r not in seated)
            raise LinkError(f"no authenticated {missing} connected within {deadline_s:.0f} s")
        try:
            conn, where = listener.accept()
        except TimeoutError:
            continue
        threading.Thread(target=handle, args=(conn, f"{where[0]}:{where[1]}"), daemon=True).start()
