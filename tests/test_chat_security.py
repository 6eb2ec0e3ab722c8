"""The chat server's door (protocols/net/lobby.py over protocols/net/tls.py): every bad connection is refused
with one line on both sides (once the peer can read one: after TLS) and the server goes on waiting
for the right peer (random:tiny; no MPC turn needed)."""

import re
import secrets
import socket
import time

import pytest
from test_chat_session import finish, last_line, party, still_running, wait_for

from protocols.net import tls
from protocols.net.control import HANDSHAKE_S, MAX_LINE, PROTOCOL_VERSION
from protocols.net.launch import free_port
from protocols.net.lobby import SECRET_ENV, secret_path


def secure(port: int, role: str = "client", secret: bytes | None = None, pins=None) -> tls.SecureSocket:
    """A hand-driven TLS connection that authenticates like a real party (the local secret)."""
    secret = secret or bytes.fromhex(secret_path(port).read_text())
    return tls.connect(("127.0.0.1", port), tls.ephemeral(), tls.Trust(secret=secret, pins=pins or {}), role,
                       "server", 10)


def refusal(link: tls.SecureSocket) -> str:
    """The one line the server answers with; then it closes the connection."""
    msg = link.recv_msg(timeout_s=HANDSHAKE_S + 5)
    assert set(msg) == {"error"}, msg
    with pytest.raises(tls.LinkError, match="closed the connection"):
        link.recv_msg(timeout_s=5)
    return msg["error"]


def hello(role: str = "client", **fields) -> dict:
    base = {"role": role, "version": PROTOCOL_VERSION, "model": "random:tiny", "arch": {}, "dealer": "ttp",
            "policy": "mpcache", "budget": 0.2, "stage_tokens": 256, "approx": "fast", "expect_digest": None,
            "expect_dealer": None}
    return dict(base, **fields) if role == "client" else {"role": role, "version": PROTOCOL_VERSION, **fields}


@pytest.fixture(scope="module")
def server():
    """One TTP server for the module (waiting for a client and a dealer all along)."""
    port = free_port()
    proc = party("server", port, "--dealer", "ttp")
    wait_for(proc, "listening")
    yield port, proc
    if proc.poll() is None:
        still_running(proc, "")


def refused_on_server(proc, text: str) -> None:
    wait_for(proc, text, 30)
    assert proc.poll() is None


def test_not_tls_is_refused(server):
    port, proc = server
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while raw.recv(4096):  # the server closes it (a TLS alert at most)
            pass
    refused_on_server(proc, "refused a connection from 127.0.0.1: TLS handshake")


def test_non_object_json_is_refused(server):
    port, proc = server
    link = secure(port)
    link.sendall(len(b"[1, 2, 3]").to_bytes(4, "big") + b"[1, 2, 3]")
    assert "not a JSON object" in refusal(link)
    refused_on_server(proc, "sent a message that is not a JSON object; still waiting")


def test_oversize_message_is_refused(server):
    port, proc = server
    link = secure(port)
    link.sendall((MAX_LINE + 1).to_bytes(4, "big"))  # the size alone: refused before reading it
    assert f"a {MAX_LINE + 1}-byte message (limit {MAX_LINE})" in refusal(link)
    refused_on_server(proc, f"(limit {MAX_LINE}); still waiting")


def test_malformed_hello_and_a_switched_role_are_refused(server):
    port, proc = server
    link = secure(port)
    link.send_msg(hello(version="2"))
    assert "malformed client hello: field 'version' must be an integer" in refusal(link)
    refused_on_server(proc, "malformed client hello")
    link = secure(port, role="dealer")
    link.send_msg(hello("client"))
    assert "'client' after authenticating as dealer" in refusal(link)


def test_wrong_secret_is_refused_on_both_sides(server):
    port, proc = server
    with pytest.raises(tls.AuthError, match="does not know the session secret"):
        secure(port, secret=b"x" * 32)
    refused_on_server(proc, "refused a connection from 127.0.0.1: the client refused us")
    code, _, err = finish(party("client", port, env={SECRET_ENV: "00" * 32}))
    assert code == 3 and "does not know the session secret" in last_line(err)


def test_wrong_server_key_is_refused_by_the_client(server):
    port, proc = server
    code, _, err = finish(party("client", port, "--peer-fingerprint", "ab" * 32))
    assert code == 3 and "is not the pinned abababababababab" in last_line(err)
    refused_on_server(proc, "the client refused us")


def test_silent_stranger_holds_up_nobody_and_is_dropped_at_the_deadline(server):
    port, proc = server
    start = time.monotonic()
    silent = socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_S + 10)
    link = secure(port)  # another connection is served at once meanwhile
    link.send_msg(hello(budget="big"))
    assert "field 'budget' must be a number" in refusal(link)
    assert time.monotonic() - start < HANDSHAKE_S / 2
    assert silent.recv(4096) == b""  # closed at the deadline
    assert HANDSHAKE_S - 1 < time.monotonic() - start < HANDSHAKE_S + 5
    silent.close()
    refused_on_server(proc, "refused a connection from 127.0.0.1: the peer sent nothing in time")


def test_second_dealer_is_refused_the_first_stays(server):
    port, proc = server
    dealer = party("dealer", port)
    key = re.search(r"my key ([0-9a-f]{16})", wait_for(dealer, "waiting for the client")).group(1)
    code, _, err = finish(party("dealer", port))
    assert code == 3 and "the server already has a dealer" in last_line(err)
    refused_on_server(proc, "the server already has a dealer; still waiting")
    assert dealer.poll() is None  # the seated dealer is still waiting
    dealer.kill()
    dealer.communicate()
    refused_on_server(proc, f"the dealer (key {key}) left")  # the seat is free for the next test


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
    still_running(proc, "needs no dealer; still waiting")


def test_unpinned_dealer_is_refused_when_the_client_expects_another(tmp_path):
    """--expect-dealer: a dealer with another key is refused whether it came before the client
    (unseated) or after; the client and the server keep waiting for the pinned one."""
    port = free_port()
    server = party("server", port, "--dealer", "ttp")
    wait_for(server, "listening")
    pinned = tls.make(tmp_path / "pinned.pem").fingerprint
    early = party("dealer", port)
    wait_for(early, "waiting for the client")
    client = party("client", port, "--expect-dealer", pinned)
    code, _, err = finish(early)
    assert code == 3 and "the client pins another dealer key" in last_line(err)
    wait_for(client, "waiting for the dealer")
    code, _, err = finish(party("dealer", port))  # a late stranger dealer: refused too
    assert code == 3 and "the client pins another dealer key" in last_line(err)
    assert client.poll() is None
    good = party("dealer", port, "--key", str(tmp_path / "pinned.pem"))
    seen = wait_for(good, "dealer: serving")  # seated: the session would start now
    assert f"my key {pinned}" in seen and "the server's key" in seen
    seen = wait_for(client, "the dealer's key")
    for proc in (good, client, server):
        proc.kill()
        proc.communicate()


def test_local_secret_file_is_private(server):
    port, _ = server
    path = secret_path(port)
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert len(bytes.fromhex(path.read_text())) == 32


def _host_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
            ip = probe.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_any_address_server_advertises_the_address_the_client_reached():
    """--addr 0.0.0.0: the MPC rendezvous (and the direct link's route) is the address the client
    connected to, never 127.0.0.1 for a remote client."""
    ip = _host_ip()
    if ip is None:
        pytest.skip("no non-loopback address on this machine")
    port = free_port()
    env = {SECRET_ENV: secrets.token_hex(32)}
    server = party("server", port, "--dealer", "ttp", "--addr", "0.0.0.0", env=env)
    wait_for(server, "listening on 0.0.0.0")
    client = party("client", port, "--addr", ip, env=env)
    wait_for(server, f"the MPC rendezvous will be {ip}:{port + 1}")
    for proc in (client, server):
        proc.kill()
        proc.communicate()


def test_a_seated_dealer_that_leaves_is_unseated_and_another_can_come(server):
    port, proc = server
    for _ in range(2):  # the seat is free again each time
        dealer = party("dealer", port)
        key = re.search(r"my key ([0-9a-f]{16})", wait_for(dealer, "waiting for the client")).group(1)
        dealer.kill()
        dealer.communicate()
        refused_on_server(proc, f"the dealer (key {key}) left before the session began; still waiting")


def test_pinned_keys_without_a_secret_and_a_wrong_client_key(tmp_path):
    """Three terminals with keys (`mpcache keys`): the server pins the client, the client pins the
    server; no secret is made. A client with another key is refused by the server."""
    port = free_port()
    fps = {name: tls.make(tmp_path / f"{name}.pem").fingerprint for name in ("server", "client", "other")}
    server = party("server", port, "--dealer", "ttp", "--key", str(tmp_path / "server.pem"),
                   "--peer-fingerprint", fps["client"], "--expect-dealer", "cd" * 32)
    wait_for(server, "listening")
    assert not secret_path(port).exists()  # every peer is pinned: no secret
    code, _, err = finish(party("client", port, "--key", str(tmp_path / "other.pem"),
                                "--peer-fingerprint", fps["server"]))
    assert code == 3 and "the client's key" in last_line(err) and "is not the pinned" in last_line(err)
    refused_on_server(server, "is not the pinned")
    client = party("client", port, "--key", str(tmp_path / "client.pem"), "--peer-fingerprint", fps["server"])
    seen = wait_for(client, "waiting for the dealer")
    assert f"my key {fps['client']}" in seen and f"the server's key {fps['server']}" in seen
    client.kill()
    client.communicate()
    still_running(server, f"key {fps['client'][:16]}) left before the session began")
