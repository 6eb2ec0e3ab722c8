"""The parties' direct link: every two-party collective that carries a share goes over it.

CrypTen opens a share with ``dist.all_reduce`` over gloo: in the clear, and for two parties two
dependent message steps. Here each party sends its share once, over one TLS 1.3 connection
authenticated by ``protocols.net.tls`` (pinned keys or the session secret), and adds the one it
receives: one round per opening, large messages sent and received at once by one thread
(``tlsio.SecureSocket.exchange``). Sums and XORs are exact: results are bit-identical to gloo's.

Routed through the link (two parties, main group, CPU tensors; anything else goes to CrypTen's
original): ``all_reduce`` (SUM, BXOR), ``reduce`` (reveal to one party), ``scatter`` (TFP's shares),
``gather``, ``all_gather``, ``broadcast`` and ``broadcast_obj`` (as tagged JSON, never pickle).
Each replacement is wrapped by CrypTen's own ``_logging`` under the same name, so bytes and rounds
are counted exactly as before. gloo keeps the rendezvous and barriers only.

``install(timeout_s)`` (both parties, same point: ``runtime.init``) connects them: party 0 listens
and publishes "host:port" in torchrun's TCPStore (no pickle); party 1 connects. Party 0 accepts
until the authenticated client arrives within the deadline (a stranger or a wrong key is refused
with one line; the session goes on). Then party 0 makes the parties' pair key
(``protocols.ring.csprng``) and sends it over the link. ``MPCACHE_INSECURE=1`` (bench only): plain
sockets; ``MPCACHE_SOCKET=0`` (insecure only): gloo, as CrypTen does.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from crypten import communicator
from crypten.communicator.communicator import _logging
from crypten.communicator.distributed_communicator import DistributedCommunicator

from mpcache.core.errors import RuntimeFault
from protocols.net import dealerlink, links
from protocols.net.tlsio import SecureSocket
from protocols.ring import csprng

_PATCHED = "_mpcache_fastcomm"
_LINK = "_mpcache_link"
OBJ_LIMIT = 64 << 20  # a broadcast object (settings, token lists) on the link, at most
_OPS = {dist.ReduceOp.SUM: torch.add, dist.ReduceOp.BXOR: torch.bitwise_xor}
_installs = [0]


_bytes = links.tensor_bytes


class Link:
    """The ordered stream between the two parties (both call in the same order)."""

    def __init__(self, sock: SecureSocket, timeout_s: float):
        self.sock, self.timeout_s = sock, timeout_s

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout_s

    def exchange(self, mine: torch.Tensor) -> torch.Tensor:
        """Send ``mine`` (contiguous, CPU), receive the other party's tensor of the same shape."""
        theirs = torch.empty_like(mine)
        self.sock.exchange(_bytes(mine), _bytes(theirs), self._deadline())
        return theirs

    def send(self, t: torch.Tensor) -> None:
        self.sock.exchange(_bytes(t.contiguous()), b"", self._deadline())

    def recv(self, like: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(like, memory_format=torch.contiguous_format)
        self.sock.exchange(b"", _bytes(out), self._deadline())
        return out

    def send_obj(self, msg: dict) -> None:
        self.sock.send_msg(msg, self._deadline())

    def recv_obj(self) -> dict:
        return self.sock.recv_msg(OBJ_LIMIT, self._deadline())


# --- connecting ---------------------------------------------------------------------------------------
def connect(comm, timeout_s: float) -> Link | None:
    """Both parties: open the direct link (None only where the insecure bench asks for gloo)."""
    if os.environ.get("MPCACHE_SOCKET", "1") == "0":
        if not links.insecure():
            raise RuntimeFault("MPCACHE_SOCKET=0 would open shares over gloo in the clear "
                               "(bench --insecure only)")
        return None
    _installs[0] += 1
    name = f"link{_installs[0]}"
    if comm.get_rank() == 0:
        sock = links.offer(name, "server", ("client",), timeout_s)["client"]
    else:
        sock = links.dial(name, "client", "server", timeout_s)
    return Link(sock, timeout_s)


def _pair_key(comm, link: Link | None) -> bytes:
    """Party 0 makes the parties' pair key (protocols.ring.csprng) and sends it over the link."""
    sender = comm.get_rank() == 0
    key = bytearray(csprng.fresh_key() if sender else csprng.KEY_BYTES)
    tensor = torch.frombuffer(key, dtype=torch.uint8)
    if link is None:  # insecure bench with MPCACHE_SOCKET=0 only
        (dist.send if sender else dist.recv)(tensor, 1 - comm.get_rank(), group=comm.main_group)
    elif sender:
        link.send(tensor)
    else:
        tensor.copy_(link.recv(tensor))
    return bytes(tensor.numpy().tobytes())


# --- the collectives ----------------------------------------------------------------------------------
def _plain(tensors) -> bool:
    return all(type(t) is torch.Tensor and t.device.type == "cpu" for t in tensors)


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    flats = [t.reshape(-1) for t in tensors]
    return flats[0].contiguous() if len(flats) == 1 else torch.cat(flats)


def _split(total: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for t in like:
        out.append(total[start:start + t.numel()].view(t.shape))
        start += t.numel()
    return out


def _patch(cls, inners: dict) -> None:
    def link_of(self) -> Link | None:
        return getattr(self, _LINK, None) if self.get_world_size() == 2 else None

    def main(self, group) -> bool:
        return group is None or group is self.main_group

    def all_reduce(self, input, op=dist.ReduceOp.SUM, batched=False):
        tensors, link = (list(input) if batched else [input]), link_of(self)
        if link is None or op not in _OPS or not _plain(tensors) or len({t.dtype for t in tensors}) != 1:
            return inners["all_reduce"](self, input, op=op, batched=batched)
        mine = _cat(tensors)
        out = _split(_OPS[op](mine, link.exchange(mine)) if mine.numel() else mine, tensors)
        return out if batched else out[0]

    def reduce(self, input, dst, op=dist.ReduceOp.SUM, batched=False):
        tensors, link = (list(input) if batched else [input]), link_of(self)
        if link is None or op not in _OPS or not _plain(tensors) or len({t.dtype for t in tensors}) != 1:
            return inners["reduce"](self, input, dst, op=op, batched=batched)
        mine = _cat(tensors)
        if self.get_rank() != dst:
            link.send(mine)
            return None
        out = _split(_OPS[op](mine, link.recv(mine)), tensors)
        return out if batched else out[0]

    def scatter(self, scatter_list, src, size=None, device=None):
        link = link_of(self)
        if link is None or not _plain(scatter_list or []):
            return inners["scatter"](self, scatter_list, src, size=size, device=device)
        if src == self.get_rank():
            link.send(scatter_list[1 - src].data)
            return scatter_list[src].data
        size = size if size is not None else scatter_list[self.get_rank()].size()
        return link.recv(torch.empty(size, dtype=torch.long))

    def gather(self, tensor, dst):
        link = link_of(self)
        if link is None or not _plain([tensor.data]):
            return inners["gather"](self, tensor, dst)
        if self.get_rank() != dst:
            link.send(tensor.data)
            return [None]
        theirs = link.recv(tensor.data)
        return [tensor.data, theirs] if dst == 0 else [theirs, tensor.data]

    def all_gather(self, tensor):
        link = link_of(self)
        if link is None or not _plain([tensor.data]):
            return inners["all_gather"](self, tensor)
        theirs = link.exchange(tensor.data.contiguous())
        return [tensor.data, theirs] if self.get_rank() == 0 else [theirs, tensor.data]

    def broadcast(self, input, src, group=None, batched=False):
        tensors, link = (list(input) if batched else [input]), link_of(self)
        if link is None or not main(self, group) or not _plain([t.data for t in tensors]):
            return inners["broadcast"](self, input, src, group=group, batched=batched)
        for t in tensors:
            if self.get_rank() == src:
                link.send(t.data)
            else:
                t.data.copy_(link.recv(t.data))
        return input

    def broadcast_obj(self, obj, src, group=None):
        link = link_of(self)
        if link is None or not main(self, group):
            return inners["broadcast_obj"](self, obj, src, group=group)
        if self.get_rank() == src:  # a type tagged JSON cannot carry is a bug here: no pickle fallback
            link.send_obj({"obj": links.encode(obj)})
            return obj
        return links.decode(link.recv_obj().get("obj"))

    for fn in (all_reduce, reduce, scatter, gather, all_gather, broadcast, broadcast_obj):
        setattr(cls, fn.__name__, _logging(fn))


def install(timeout_s: float = 60.0) -> None:
    """Open the direct link and route the two-party collectives over it (idempotent per session).
    Both parties must call it at the same point."""
    if not getattr(DistributedCommunicator, _PATCHED, False):
        names = ("all_reduce", "reduce", "scatter", "gather", "all_gather", "broadcast", "broadcast_obj")
        # The originals are logged; calling the logged ones would count twice.
        originals = {n: getattr(DistributedCommunicator, n) for n in names}
        inners = {n: fn.__wrapped__ for n, fn in originals.items()}
        _patch(DistributedCommunicator, inners)
        DistributedCommunicator._mpcache_originals = originals  # gloo's (tests compare with them)
        setattr(DistributedCommunicator, _PATCHED, True)
    comm = communicator.get()
    if comm.get_world_size() == 2 and not hasattr(comm, _LINK):
        link = connect(comm, timeout_s)
        setattr(comm, _LINK, link)
        csprng.bind_pair(_pair_key(comm, link))


def linked() -> bool:
    """Whether this session's openings use the direct connection."""
    return getattr(communicator.get(), _LINK, None) is not None


def framing_bytes() -> int:
    """TLS bytes beyond the plaintext on this party's links (direct + dealer), both directions."""
    total = 0
    link = getattr(communicator.get(), _LINK, None)
    if link is not None:
        total += link.sock.framing_bytes
    sock = dealerlink.party_socket()
    return total + (sock.framing_bytes if sock is not None else 0)
