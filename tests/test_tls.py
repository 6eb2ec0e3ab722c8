"""protocols/net/tls.py: TLS 1.3 links authenticated inside the channel (session secret or pinned key);
refusals are one line and never stop a listener."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time

import pytest

from protocols.net import tls

SECRET = os.urandom(32)


def _listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


def _serve(listener, identity, trust, peer_role="client", deadline_s=20.0, handshake_s=2.0):
    """Run tls.accept in a thread; returns (thread, box) where box gets the socket or the error."""
    box: dict = {}

    def run():
        try:
            box["sock"] = tls.accept(listener, identity, trust, "server", peer_role, deadline_s, handshake_s)
        except Exception as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _addr(listener):
    return listener.getsockname()[:2]


def _check_link(server_sock, client_sock):
    """Both directions carry bytes and JSON; a 3 MB exchange in both directions at once completes."""
    client_sock.send_msg({"hello": 1})
    assert server_sock.recv_msg(timeout_s=5) == {"hello": 1}
    big = os.urandom(3 << 20)
    out = {}

    def other():
        buf = bytearray(len(big))
        server_sock.exchange(big[::-1], buf, tls.deadline_in(10))
        out["server"] = bytes(buf)

    t = threading.Thread(target=other)
    t.start()
    buf = bytearray(len(big))
    client_sock.exchange(big, buf, tls.deadline_in(10))
    t.join()
    assert out["server"] == big and bytes(buf) == big[::-1]
    assert client_sock.framing_bytes > 0


def test_right_secret_accepted_and_link_works():
    ids, idc = tls.ephemeral(), tls.ephemeral()
    trust = tls.Trust(secret=SECRET)
    with _listener() as lst:
        t, box = _serve(lst, ids, trust)
        c = tls.connect(_addr(lst), idc, trust, "client", "server", 10)
        t.join(10)
        s = box["sock"]
        assert s.peer_fingerprint == idc.fingerprint and c.peer_fingerprint == ids.fingerprint
        assert c.obj.version() == "TLSv1.3"
        _check_link(s, c)
        s.close()
        c.close()


def test_pins_accepted():
    ids, idc = tls.ephemeral(), tls.ephemeral()
    with _listener() as lst:
        t, box = _serve(lst, ids, tls.Trust(pins={"client": idc.fingerprint}))
        c = tls.connect(_addr(lst), idc, tls.Trust(pins={"server": ids.fingerprint}), "client", "server", 10)
        t.join(10)
        assert box["sock"].peer_fingerprint == idc.fingerprint
        c.close()


def test_wrong_secret_refused_listener_goes_on(capfd):
    ids, idc = tls.ephemeral(), tls.ephemeral()
    with _listener() as lst:
        t, box = _serve(lst, ids, tls.Trust(secret=SECRET))
        with pytest.raises(tls.AuthError, match="session secret"):
            tls.connect(_addr(lst), idc, tls.Trust(secret=os.urandom(32)), "client", "server", 10)
        c = tls.connect(_addr(lst), idc, tls.Trust(secret=SECRET), "client", "server", 10)
        t.join(10)
        assert "sock" in box
        c.close()
    err = capfd.readouterr().err
    assert err.count("refused a connection") == 1 and "session secret" in err


def test_wrong_pin_refused_both_ways():
    ids, idc, other = tls.ephemeral(), tls.ephemeral(), tls.ephemeral()
    with _listener() as lst:
        t, box = _serve(lst, ids, tls.Trust(pins={"client": idc.fingerprint}))
        with pytest.raises(tls.AuthError, match="not the pinned"):  # the client pins another server
            tls.connect(_addr(lst), idc, tls.Trust(pins={"server": other.fingerprint}), "client", "server",
                        10)
        with pytest.raises(tls.AuthError, match="refused us"):  # a client the server did not pin
            tls.connect(_addr(lst), other, tls.Trust(pins={"server": ids.fingerprint}), "client", "server",
                        10)
        c = tls.connect(_addr(lst), idc, tls.Trust(pins={"server": ids.fingerprint}), "client", "server", 10)
        t.join(10)
        assert "sock" in box
        c.close()


def _relay(front: socket.socket, back_addr, relay_id: tls.Identity) -> None:
    """A man in the middle that terminates TLS on both sides and forwards the plaintext."""
    conn, _ = front.accept()
    front_side = tls.SecureSocket(conn, tls._context(relay_id, server=True), server=True)
    front_side.handshake(tls.deadline_in(5))
    back = tls.SecureSocket(socket.create_connection(back_addr), tls._context(relay_id, server=False),
                            server=False)
    back.handshake(tls.deadline_in(5))
    try:  # the handshake alternates: forward one message each way in turn
        for a, b in [(front_side, back), (back, front_side)] * 4:
            head = a.recv_exact(4, tls.deadline_in(5))
            b.sendall(head + a.recv_exact(int.from_bytes(head, "big"), tls.deadline_in(5)))
    except Exception:  # noqa: BLE001 - one side refused: the relay ends
        front_side.close()
        back.close()


@pytest.mark.parametrize("mode", ["secret", "pins"])
def test_mitm_relay_refused(mode):
    ids, idc, mitm = tls.ephemeral(), tls.ephemeral(), tls.ephemeral()
    if mode == "secret":
        ts = tc = tls.Trust(secret=SECRET)
    else:
        ts, tc = tls.Trust(pins={"client": idc.fingerprint}), tls.Trust(pins={"server": ids.fingerprint})
    with _listener() as lst, _listener() as front:
        t, box = _serve(lst, ids, ts, deadline_s=4)
        threading.Thread(target=_relay, args=(front, _addr(lst), mitm), daemon=True).start()
        with pytest.raises(tls.AuthError):
            tls.connect(_addr(front), idc, tc, "client", "server", 10)
        t.join(10)
        assert "sock" not in box


def _raw_tls(addr) -> tls.SecureSocket:
    ctx = tls._context(tls.ephemeral(), server=False)
    s = tls.SecureSocket(socket.create_connection(addr), ctx, server=False)
    s.handshake(tls.deadline_in(5))
    return s


def test_bad_peers_refused_within_deadline_listener_goes_on(capfd):
    """Oversize hello, non-object hello, a silent TCP stranger and a trickler each refused (the
    handshake deadline is 2 s), while the right client is accepted meanwhile."""
    ids, idc = tls.ephemeral(), tls.ephemeral()
    trust = tls.Trust(secret=SECRET)
    with _listener() as lst:
        t, box = _serve(lst, ids, trust, handshake_s=2.0)
        addr = _addr(lst)
        silent = socket.create_connection(addr)
        oversize = _raw_tls(addr)
        oversize.sendall((10 << 20).to_bytes(4, "big"))
        notobj = _raw_tls(addr)
        notobj.send_msg([1, 2, 3])  # type: ignore[arg-type]
        trickle = _raw_tls(addr)
        start = time.monotonic()
        c = tls.connect(addr, idc, trust, "client", "server", 10)  # not held up by the strangers
        assert time.monotonic() - start < 2.0
        trickle.sendall((100).to_bytes(4, "big"))
        try:
            for _ in range(10):  # a byte of its 100-byte hello every 0.3 s: past the 2 s deadline
                trickle.sendall(b" ")
                time.sleep(0.3)
        except tls.LinkError:  # refused and closed
            pass
        t.join(10)
        assert "sock" in box
        c.close()
        silent.close()
    err = capfd.readouterr().err
    assert "limit" in err and "not a JSON object" in err
    assert err.count("deadline passed") >= 2  # the silent stranger and the trickler


def test_recv_msg_deadline_is_overall():
    a, b = socket.socketpair()
    ida = tls.ephemeral()
    server = tls.SecureSocket(a, tls._context(ida, server=True), server=True)
    client = tls.SecureSocket(b, tls._context(ida, server=False), server=False)
    th = threading.Thread(target=server.handshake, args=(tls.deadline_in(5),))
    th.start()
    client.handshake(tls.deadline_in(5))
    th.join()

    def trickle():
        client.sendall((100).to_bytes(4, "big"))
        for _ in range(20):  # a byte every 0.1 s: each recv succeeds, the message never ends in time
            try:
                client.sendall(b" ")
            except tls.LinkError:
                return
            time.sleep(0.1)

    threading.Thread(target=trickle, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(tls.LinkError, match="in time"):
        server.recv_msg(timeout_s=0.7)
    assert time.monotonic() - start < 1.2


def test_keys_roundtrip(tmp_path):
    made = tls.make(tmp_path / "k.pem")
    assert oct(os.stat(tmp_path / "k.pem").st_mode & 0o777) == "0o600"
    assert tls.load(tmp_path / "k.pem").fingerprint == made.fingerprint
    with pytest.raises(FileExistsError):
        tls.make(tmp_path / "k.pem")


def test_trust_from_flags():
    fp = tls.ephemeral().fingerprint
    env = {"MPCACHE_SESSION_SECRET": SECRET.hex(), "MPCACHE_EXPECT_DEALER": fp.upper()}
    trust = tls.trust_from_env_and_flags("client", [fp], env=env)
    assert trust.secret == SECRET and trust.pins == {"server": fp, "dealer": fp}
    assert tls.trust_from_env_and_flags("dealer", f"server={fp},client={fp}", env={}).pins == {
        "server": fp, "client": fp}
    with pytest.raises(tls.AuthError):
        tls.trust_from_env_and_flags("client", ["zz"], env={})
    with pytest.raises(tls.AuthError):
        tls.trust_from_env_and_flags("dealer", [fp], env={})
    assert ssl.HAS_TLSv1_3


def test_accept_each_seats_one_per_role_and_refuses_a_second(capfd):
    """The dealer's accept: server and client in any order; a second client is refused (one
    line on both sides) while the server's seat is still open."""
    ids = tls.ephemeral()
    trust = tls.Trust(secret=SECRET)
    box: dict = {}
    with _listener() as lst:
        def run():
            box["socks"] = tls.accept_each(lst, ids, trust, "dealer", ("server", "client"), 20)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        first = tls.connect(_addr(lst), tls.ephemeral(), trust, "client", "dealer", 10)
        with pytest.raises(tls.AuthError, match="already connected"):
            tls.connect(_addr(lst), tls.ephemeral(), trust, "client", "dealer", 10)
        server = tls.connect(_addr(lst), tls.ephemeral(), trust, "server", "dealer", 10)
        t.join(10)
        assert sorted(box["socks"]) == ["client", "server"]
        first.close()
        server.close()
    assert "a second client is refused" in capfd.readouterr().err
