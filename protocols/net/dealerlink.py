"""The TTP dealer off gloo: each party talks to the dealer over its own authenticated TLS link.

CrypTen's TTPClient/TTPServer send pickled request objects (``send_obj``/``recv_obj``) and the
dealer's answer (``dist.broadcast``) over gloo, in the clear, and its seeds likewise. Here:

- the dealer (rank 2) listens, publishes "host:port" in torchrun's TCPStore (first writer wins:
  a second dealer is refused), prints its key's fingerprint and accepts the server and the client
  (each once; anyone else is refused with one line);
- each party connects, authenticates the dealer (``--expect-dealer FP`` pins its key; otherwise
  the session secret), prints its fingerprint, and receives the 256-bit key of the stream it
  shares with the dealer (``protocols.ring.csprng.bind_dealer`` / ``dealer_bind``);
- party 0's requests are bounded JSON headers {"function", "args", "kwargs"} (tagged JSON: tuples
  survive) and the answers a header {"shape"} plus raw little-endian int64 bytes. The server
  dispatches to *a method named like the request* (``[A-Za-z][A-Za-z0-9_]*``; private names are not
  reachable), so a new request is a new method on ``FixedMaskServer``.

Dealer traffic is still counted through CrypTen's communicator on party 0 (``Meter.dealer`` moves it
out of the online figures), one round per request and one per answer.

After each party's stream key the dealer sends one byte: whether it works ahead
(``protocols.net.ahead``: predicted requests answered before they are made, item streams; the
default) or answers each request when it comes (``MPCACHE_DEALER_AHEAD=0``, and always with the
insecure bench baseline). Answers made ahead count their bytes as dealer traffic and no round.
"""

from __future__ import annotations

import os
import re
import time

import crypten
import torch
from crypten import communicator
from crypten.mpc.provider.ttp_provider import TTPClient

from mpcache.core.errors import RuntimeFault
from protocols.net import ahead, links
from protocols.net.ahead_server import AheadServer
from protocols.net.tlsio import LinkError, SecureSocket
from protocols.ring import csprng
from protocols.ring.itemstream import ItemKeys

AHEAD_ENV = "MPCACHE_DEALER_AHEAD"
REQUEST_LIMIT = 1 << 20  # a request header (shapes, keys, views), at most
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")  # CrypTen has "B2A"
_state: dict = {"timeout_s": 60.0, "sock": None}


def party_socket() -> SecureSocket | None:
    return _state["sock"]


# --- party side -----------------------------------------------------------------------------------------
def _client_setup(self) -> None:
    """Replaces TTPClient._setup_generators: the dealer link and the key of the dealer stream."""
    comm = communicator.get()
    me = links.ROLE_OF_RANK[comm.get_rank()]
    timeout_s = _state["timeout_s"]
    s = links.dial("dealer", me, "dealer", timeout_s)
    key = s.recv_exact(csprng.KEY_BYTES, time.monotonic() + timeout_s)
    mode = s.recv_exact(1, time.monotonic() + timeout_s)  # the dealer's word: does it work ahead?
    if mode == ahead.ON and not csprng.insecure_rng():
        csprng.bind_dealer(key)
        ahead.start(self, key, comm.get_rank(), s, timeout_s)
    elif csprng.insecure_rng():  # the insecure reference generator (bench --insecure, attack test)
        self.generator = torch.Generator()
        self.generator.manual_seed(int.from_bytes(key[:8], "little", signed=True))
    else:
        csprng.bind_dealer(key)
        self.generator = csprng._placeholder()
        csprng.bind_generator(self.generator, csprng.party_dealer_stream)
    self.generator_cuda = None
    self.link = s
    _state["sock"] = s
    comm.ttp_initialized = False  # shutdown must not send "terminate" over gloo: close() sends it here


def _client_request(self, func_name, device, *args, **kwargs):
    """Party 0: one request to the dealer, its answer as an int64 tensor."""
    schedule = ahead.schedule()
    if schedule is not None:  # the answer was made ahead (or is asked for now, by item)
        return schedule.fetch(func_name)
    s = self.link
    deadline = time.monotonic() + _state["timeout_s"]
    header = {"function": func_name, "args": links.encode(args), "kwargs": links.encode(kwargs)}
    sent = s.plain_sent
    s.send_msg(header, deadline)
    sent = s.plain_sent - sent
    reply = s.recv_msg(4096, deadline)
    if "error" in reply:
        raise RuntimeFault(f"the dealer failed on {func_name}: {str(reply['error'])[:200]}")
    shape = reply.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and 0 <= n < 1 << 40 for n in shape):
        raise RuntimeFault("the dealer sent a malformed answer")
    result = torch.empty(shape, dtype=torch.long)
    s.recv_into(links.tensor_bytes(result), deadline)
    if crypten.cfg.communicator.verbose:  # as CrypTen counted it: request out, answer in
        comm = communicator.get()
        comm._log_communication(sent / comm.BYTES_PER_ELEMENT)
        comm._log_communication(result.numel())
    return result


def install_party(timeout_s: float) -> None:
    """Parties, before ``crypten.init()`` (after ``csprng.install_party``, whose seed exchange over
    gloo this replaces)."""

    _state["timeout_s"] = timeout_s
    inner = TTPClient._TTPClient__TTPClient
    inner._setup_generators = _client_setup
    inner.ttp_request = _client_request
    ahead.install(inner)


def close() -> None:
    """Party 0 ends the dealer ("terminate"); both close their link."""
    s = _state["sock"]
    if s is None:
        return
    _state["sock"] = None
    ahead.stop()
    try:
        if s.peer_role == "dealer" and links.ROLE_OF_RANK.get(_rank()) == "server":
            s.send_msg({"function": "terminate"}, time.monotonic() + 5)
    except RuntimeFault:
        pass
    s.close()


def _rank() -> int:
    try:
        return communicator.get().get_rank()
    except Exception:  # noqa: BLE001 - already shut down
        return -1


# --- dealer side ----------------------------------------------------------------------------------------
def seat(server, timeout_s: float) -> dict[str, SecureSocket]:
    """The dealer: publish, accept both parties, send each its stream key; ``server.generators``."""
    links.say_self("dealer")
    socks = links.offer("dealer", "dealer", ("server", "client"), timeout_s)
    server.generators, server.generators_cuda = [], [None, None]
    server.item_keys = None
    works_ahead = ahead_mode()
    for rank, role in ((0, "server"), (1, "client")):
        key = csprng.fresh_key()
        socks[role].sendall(key + (ahead.ON if works_ahead else ahead.OFF), time.monotonic() + timeout_s)
        if works_ahead:
            server.item_keys = (server.item_keys or []) + [ItemKeys(key)]
        if csprng.insecure_rng():
            g = torch.Generator()
            g.manual_seed(int.from_bytes(key[:8], "little", signed=True))
        else:
            csprng.dealer_bind(rank, key)
            g = csprng._placeholder()
            csprng.bind_generator(g, lambda rank=rank: csprng.dealer_stream(rank))
        server.generators.append(g)
    return socks


def ahead_mode() -> bool:
    """The dealer works ahead unless MPCACHE_DEALER_AHEAD=0 (the synchronous reference) or the
    randomness or the links are the insecure bench baseline (item streams are keyed AES)."""
    return (os.environ.get(AHEAD_ENV, "1") != "0" and not csprng.insecure_rng() and not links.insecure())


def serve(server, s: SecureSocket) -> None:
    """Answer party 0's requests until "terminate" or until it is gone."""
    if getattr(server, "item_keys", None):
        loop = AheadServer(server, s, server.item_keys)
        loop.bind()
        try:
            loop.run()
        except LinkError:
            pass
        return
    while True:
        try:
            msg = s.recv_msg(REQUEST_LIMIT, None)  # no deadline between requests: the parties compute
        except LinkError:
            return
        name = msg.get("function")
        if name == "terminate":
            return
        try:
            known = isinstance(name, str) and _NAME.fullmatch(name) and callable(getattr(server, name, None))
            if not known:
                raise ValueError(f"no request named {str(name)[:64]!r}")
            args, kwargs = links.decode(msg.get("args", [])), links.decode(msg.get("kwargs", {"d": []}))
            if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
                raise ValueError("malformed request arguments")
            server.device = "cpu"
            result = getattr(server, name)(*args, **kwargs).to(torch.long).contiguous()
        except Exception as exc:  # noqa: BLE001 - reported to party 0, which stops with one line
            s.send_msg({"error": f"{type(exc).__name__}: {str(exc)[:200]}"}, time.monotonic() + 30)
            continue
        deadline = time.monotonic() + max(60.0, _state["timeout_s"])
        s.send_msg({"shape": list(result.shape)}, deadline)
        s.sendall(links.tensor_bytes(result), deadline)


def run(server_cls, on_connected, timeout_s: float) -> None:
    """Body of the dealer process: join the rendezvous, seat the parties, serve."""
    crypten.init()  # rank 2 joins the process groups (gloo: rendezvous and barriers only)
    _state["timeout_s"] = timeout_s
    server = object.__new__(server_cls)  # not TTPServer.__init__: that one serves over gloo
    server.device = "cpu"
    socks = seat(server, timeout_s)
    if on_connected is not None:
        on_connected()
    try:
        serve(server, socks["server"])
    finally:
        for sock in socks.values():
            sock.close()
