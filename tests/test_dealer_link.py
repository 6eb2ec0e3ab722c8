"""The TTP dealer's links (protocols.net.dealerlink) on a real TCPStore: a second dealer cannot take
the seat, a party refuses a dealer it did not pin, and the seated dealer goes on serving."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import torch.distributed as dist

from protocols.net import ahead, dealerlink, links, tls
from protocols.net.launch import free_port
from protocols.ring import csprng


class EchoServer:
    """A dealer whose one request answers a tensor of the requested shape."""

    def iota(self, shape):
        return torch.arange(int(torch.tensor(shape).prod())).reshape(tuple(shape)) - 7

    def _private(self):
        raise AssertionError("a private method must not be reachable")


class _Client:  # what TTPClient holds: the link
    def __init__(self, link):
        self.link = link


@pytest.fixture()
def store(monkeypatch):
    port = free_port()
    s = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    local = threading.local()  # a store client serves one thread at a time (as in each party)

    def client():
        if not hasattr(local, "store"):
            local.store = dist.TCPStore("127.0.0.1", port, is_master=False)
        return local.store

    monkeypatch.setattr(links, "store", client)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MPCACHE_SESSION_SECRET", "ab" * 32)
    monkeypatch.setenv("MPCACHE_DEALER_AHEAD", "0")  # these tests speak the synchronous requests
    for name in ("MPCACHE_EXPECT_DEALER", "MPCACHE_PEER_FINGERPRINT", "MPCACHE_KEY", "MPCACHE_INSECURE",
                 "MPCACHE_INSECURE_RNG", "MPCACHE_DEALER_PORT", "MPCACHE_DEALER_ADVERTISE"):
        monkeypatch.delenv(name, raising=False)
    csprng.reset()
    return s


def _dealer(timeout_s=20.0):
    box: dict = {}

    def run():
        try:
            server = EchoServer()
            socks = dealerlink.seat(server, timeout_s)
            box["seated"] = True
            dealerlink.serve(server, socks["server"])
        except Exception as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _wait_published(s, name="dealer"):
    s.wait([f"mpcache/{name}"])


def _parties(box: dict) -> None:
    def party(role):
        try:
            link = links.dial("dealer", role, "dealer", 10)
            key = link.recv_exact(csprng.KEY_BYTES + 1, time.monotonic() + 10)  # + the dealer's mode
            assert key[-1:] == ahead.OFF
            box[role] = (link, key[:-1])
        except Exception as exc:  # noqa: BLE001
            box[role] = exc

    threads = [threading.Thread(target=party, args=(r,)) for r in ("server", "client")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def test_second_dealer_is_refused_and_the_first_serves(store, capfd):
    t, box = _dealer()
    _wait_published(store)
    with pytest.raises(tls.AuthError, match="already holds the seat"):
        links.offer("dealer", "dealer", ("server", "client"), 5)
    parties: dict = {}
    _parties(parties)
    link, key = parties["server"]
    assert len(key) == 32 and parties["client"][1] != key  # one stream key per party
    answer = dealerlink._client_request(_Client(link), "iota", None, (2, 3))
    assert answer.tolist() == (torch.arange(6).reshape(2, 3) - 7).tolist()
    with pytest.raises(RuntimeError, match="no request named"):  # private names are unreachable
        dealerlink._client_request(_Client(link), "_private", None)
    assert dealerlink._client_request(_Client(link), "iota", None, [1]).tolist() == [-7]  # still serving
    link.send_msg({"function": "terminate"})
    t.join(10)
    assert box.get("seated") and "error" not in box


def test_unpinned_dealer_is_refused_and_the_dealer_goes_on(store, monkeypatch, capfd):
    t, box = _dealer()
    _wait_published(store)
    monkeypatch.setenv("MPCACHE_EXPECT_DEALER", tls.ephemeral().fingerprint)
    with pytest.raises(tls.AuthError, match="the dealer's key .* is not the pinned"):
        links.dial("dealer", "client", "dealer", 10)
    monkeypatch.setenv("MPCACHE_EXPECT_DEALER", links.identity().fingerprint)  # the right dealer
    parties: dict = {}
    _parties(parties)
    assert all(isinstance(v, tuple) for v in parties.values()), parties
    link = parties["server"][0]
    assert dealerlink._client_request(_Client(link), "iota", None, (4,)).tolist() == [-7, -6, -5, -4]
    link.send_msg({"function": "terminate"})
    t.join(10)
    assert "error" not in box
    err = capfd.readouterr().err
    assert "refused a connection" in err and "refused us" in err


def test_a_second_server_is_refused(store, capfd):
    """Once both parties are seated the dealer stops listening (while it listens, a second peer of
    a seated role is refused by tls.accept_each: tests/test_tls.py)."""
    t, box = _dealer()
    _wait_published(store)
    parties: dict = {}
    _parties(parties)
    with pytest.raises(tls.LinkError, match="refuses connections"):  # seated: the door is closed
        links.dial("dealer", "server", "dealer", 1)
    parties["server"][0].send_msg({"function": "terminate"})
    t.join(10)
    assert "error" not in box
