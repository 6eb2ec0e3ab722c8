"""The chat server's door (protocols/lobby.py): every bad connection is refused with one line on
both sides and the server goes on waiting for the right peer (random:tiny, no MPC turn needed)."""

import hashlib
import hmac
import json
import os
import secrets
import socket
import subprocess
import time

import pytest
from test_chat_session import finish, last_line, party, still_running, wait_for

from protocols.control import HANDSHAKE_S, MAX_LINE
from protocols.launch import free_port
from protocols.lobby import SECRET_ENV, secret_path


def _proof(secret: bytes, who: str, server_nonce: str, nonce: str, role: str) -> str:
    data = "|".join(("mpcache-control", who, server_nonce, nonce, role)).encode()
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


class Raw:
    """A hand-driven connection to the server's control port."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_S + 10)
        self.file = self.sock.makefile("rb")

    def line(self) -> dict:
        return json.loads(self.file.readline())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def authenticate(self, port: int, role: str = "client", secret: bytes | None = None) -> dict:
        challenge = self.line()["challenge"]
        secret = secret or bytes.fromhex(secret_path(port).read_text())
        nonce = secrets.token_hex(16)
        self.send(json.dumps({"role": role, "nonce": nonce,
                              "proof": _proof(secret, "party", challenge, nonce, role)}).encode() + b"\n")
        return self.line()

    def refusal(self) -> str:
        """The one line the server answers with, then the connection is closed."""
        msgs = [json.loads(raw) for raw in self.file.readlines()]
        errors = [m["error"] for m in msgs if "error" in m]
        assert len(errors) == 1, msgs
        return errors[0]


@pytest.fixture(scope="module")
def server():
    """One TTP server for the module (waiting for a client and a dealer all along)."""
    port = free_port()
    proc = party("server", port, "--dealer", "ttp")
    wait_for(proc, "listening")
    yield port, proc
    if proc.poll() is None:
        still_running(proc, "")


def refused_on_server(proc: subprocess.Popen, text: str) -> None:
    wait_for(proc, text, 20)
    assert proc.poll() is None


def test_non_object_json_is_refused(server):
    port, proc = server
    raw = Raw(port)
    raw.line()  # the challenge
    raw.send(b"[1, 2, 3]\n")
    assert "not a JSON object (list)" in raw.refusal()
    refused_on_server(proc, "refused a connection from 127.0.0.1: a control message that is not a JSON")


def test_not_json_is_refused(server):
    port, proc = server
    raw = Raw(port)
    raw.line()
    raw.send(b"GET / HTTP/1.1\r\n\r\n")
    assert "not JSON" in raw.refusal()


def test_oversize_line_is_refused(server):
    port, proc = server
    raw = Raw(port)
    raw.line()
    raw.send(b"{" + b" " * (MAX_LINE + 10))  # no newline: the cap, not the deadline, ends it
    assert f"longer than {MAX_LINE} bytes" in raw.refusal()
    refused_on_server(proc, "a control line longer than")


def test_wrong_secret_is_refused_on_both_sides(server):
    port, proc = server
    raw = Raw(port)
    reply = raw.authenticate(port, secret=b"x" * 32)
    assert "authentication failed: wrong session secret" in reply["error"]
    env_client = party("client", port, env={SECRET_ENV: "00" * 32})
    code, _, err = finish(env_client)
    assert code == 3 and "authentication failed: wrong session secret" in last_line(err)
    refused_on_server(proc, "refused a connection from 127.0.0.1: authentication failed")


def test_malformed_hello_is_refused(server):
    port, proc = server
    raw = Raw(port)
    assert "proof" in raw.authenticate(port)
    raw.send(json.dumps({"role": "client", "version": "2"}).encode() + b"\n")
    assert "malformed client hello: field 'version' must be an integer" in raw.refusal()
    refused_on_server(proc, "refused a client from 127.0.0.1: malformed client hello")
    raw = Raw(port)
    raw.authenticate(port, role="dealer")
    raw.send(json.dumps({"role": "client", "version": 2, "model": "x", "arch": {}, "dealer": "ttp",
                         "policy": "full", "budget": 8, "expect_digest": None}).encode() + b"\n")
    assert "after authenticating as dealer" in raw.refusal()


def test_silent_stranger_holds_up_nobody_and_is_refused_at_the_deadline(server):
    port, proc = server
    start = time.monotonic()
    silent = Raw(port)
    silent.line()  # the challenge; then nothing
    raw = Raw(port)  # another connection is served at once meanwhile
    raw.line()
    raw.send(b"42\n")
    assert "not a JSON object" in raw.refusal()
    assert time.monotonic() - start < HANDSHAKE_S / 2
    assert f"within {HANDSHAKE_S:.0f} s" in silent.refusal()
    assert HANDSHAKE_S - 1 < time.monotonic() - start < HANDSHAKE_S + 5
    refused_on_server(proc, "no authentication and hello within")


def test_second_dealer_and_second_client_are_refused_the_first_stay(server):
    port, proc = server
    dealer = party("dealer", port)
    wait_for(dealer, "waiting for the client")
    code, _, err = finish(party("dealer", port))
    assert code == 3 and "the server already has a dealer" in last_line(err)
    refused_on_server(proc, "refused a dealer from 127.0.0.1: the server already has a dealer")
    assert dealer.poll() is None  # the seated dealer is still waiting
    dealer.kill()
    dealer.communicate()


def test_second_client_before_the_session_is_refused():
    """A TTP server with its client seated (waiting for the dealer) turns a second client away."""
    port = free_port()
    server = party("server", port, "--dealer", "ttp")
    wait_for(server, "listening")
    first = party("client", port)
    wait_for(first, "waiting for the dealer")
    code, _, err = finish(party("client", port))
    assert code == 3 and "the server already has a client" in last_line(err)
    assert first.poll() is None
    first.kill()
    first.communicate()
    still_running(server, "")


def test_a_dealer_is_refused_by_a_tfp_server():
    port = free_port()
    proc = party("server", port, "--dealer", "tfp")
    wait_for(proc, "listening")
    code, _, err = finish(party("dealer", port))
    assert code == 3 and "needs no dealer" in last_line(err)
    still_running(proc, "refused a dealer")


def test_local_secret_file_is_private(server):
    port, _ = server
    path = secret_path(port)
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert len(bytes.fromhex(path.read_text())) == 32
    assert os.environ.get(SECRET_ENV) is None
