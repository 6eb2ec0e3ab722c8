"""The TTP dealer works ahead: the dealer's side (the parties' side and the protocol:
``protocols.net.ahead``).

One thread, one loop: read party 0's messages as soon as they arrive (never waiting for its own
output to drain), make the next predicted item while the queue of answers not yet handed to TLS is
under ``BUDGET``, and keep the socket writing. A synchronous answer jumps the queue (party 0 waits
for it). At a predicted mask mutation the spec work holds until party 0 reports the real one, so
every answer made ahead sees exactly the masks the parties have.

Messages from party 0 ({"ctl": ...}): "round" (a step's predicted items), "mut" (a predicted
mutation happened), "sync" (a request made now; a mutation needs no answer), "late" (make a
predicted item now), "abandon" (drop the rest of the step's prediction); {"function": "terminate"}
ends the session. Answers: a JSON header {"tag", "shape", "c"} ("skip": not made ahead; "error")
and the raw little-endian int64 values.
"""

from __future__ import annotations

import json
import os
import re
import select
import time
from collections import deque

import torch

from mpcache.core.errors import RuntimeFault
from protocols.net import links
from protocols.net.ahead import MUTATIONS
from protocols.net.predict import answer_elements
from protocols.net.tlsio import CHUNK, HIGH_WATER, LinkError, SecureSocket
from protocols.ring import csprng
from protocols.ring.itemstream import ItemKeys, spec_nonce, sync_nonce

BUDGET = 256 << 20  # bytes of answers made ahead and not yet handed to TLS (the dealer's memory)
SPEC_LIMIT = 1 << 28  # ring elements of one predicted answer (2 GB), at most: a wild guess is not made
# (the vocabulary argmax's tables are ~2e8 elements per decode token of SmolLM2)
MESSAGE_LIMIT = 64 << 20  # a message from party 0 (a step's schedule: ~100 B per item)
TRACE = os.environ.get("MPCACHE_DEALER_TRACE")  # a file: one JSON line per item made (debugging)
REQUEST_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")  # public names only (CrypTen has "B2A")


class Outbox:
    """Frames to send, written without blocking: the current frame's bytes, then the queue."""

    def __init__(self, sock: SecureSocket):
        self.sock = sock
        self.queue: deque[tuple[tuple, bytes, torch.Tensor | None]] = deque()
        self.queued_bytes = 0
        self._view: memoryview | None = None  # the frame being handed to TLS
        self._keep: torch.Tensor | None = None  # its tensor, alive while its bytes are written

    def push(self, tag: tuple, head: dict, value: torch.Tensor | None, first: bool = False) -> None:
        body = links.tensor_bytes(value) if value is not None else b""
        frame = (tag, _frame_head(head), value)
        (self.queue.appendleft if first else self.queue.append)(frame)
        self.queued_bytes += len(body)

    def drop(self, keep) -> None:
        """Forget queued frames whose tag ``keep`` rejects (a stale step's answers)."""
        kept = deque(f for f in self.queue if keep(f[0]))
        self.queued_bytes = sum(f[2].numel() * 8 for f in kept if f[2] is not None)
        self.queue = kept

    def pending(self) -> bool:
        started = self._view is not None and len(self._view) > 0
        return started or bool(self.queue) or bool(self.sock._queued()) or bool(self.sock._out.pending)

    def pump(self) -> None:
        """Hand bytes to TLS while its backlog is under HIGH_WATER, and send what the socket takes."""
        s = self.sock
        while s._queued() + s._out.pending < HIGH_WATER:
            if self._view is None or not len(self._view):
                if not self.queue:
                    break
                _, head, value = self.queue.popleft()
                s._put(memoryview(head))
                s.plain_sent += len(head)
                self._keep = value
                self._view = links.tensor_bytes(value) if value is not None else memoryview(b"")
                self.queued_bytes -= len(self._view)
                continue
            k = min(CHUNK, len(self._view))
            s._put(self._view[:k])
            s.plain_sent += k
            self._view = self._view[k:]
        s._send_some()


def _frame_head(head: dict) -> bytes:
    body = json.dumps(head, separators=(",", ":")).encode()
    return len(body).to_bytes(4, "big") + body


class AheadServer:
    """The dealer's loop over party 0's link (``server``: the FixedMaskServer with CrypTen's requests)."""

    def __init__(self, server, sock: SecureSocket, keys: list[ItemKeys]):
        self.server, self.sock, self.keys = server, sock, keys
        self.out = Outbox(sock)
        self.current = [None] * len(keys)  # the item stream of each party while an item is made
        self.round, self.items, self.pids, self.cursor, self.active = 0, [], [], 0, False
        self.by_pid: dict[int, int] = {}  # prediction id -> slot, this step
        self.compute_s = 0.0
        self._poll = select.poll()
        self._poll.register(sock.sock.fileno(), select.POLLIN)

    def bind(self) -> None:
        """The server's per-party generators draw from the current item's stream."""
        for rank, g in enumerate(self.server.generators):
            csprng.bind_generator(g, lambda rank=rank: self._stream(rank))

    def _stream(self, rank: int):
        if self.current[rank] is None:
            raise RuntimeFault("randomness: a dealer draw outside any item (refused)")
        return self.current[rank]

    def _make(self, h: dict, nonce: int) -> torch.Tensor:
        """Run one request under the item streams of ``nonce``."""
        self.current = [k.stream(nonce) for k in self.keys]
        start = time.perf_counter()
        try:
            name = h.get("function")
            known = isinstance(name, str) and REQUEST_NAME.fullmatch(name)
            if not known or not callable(getattr(self.server, name, None)):
                raise ValueError(f"no request named {str(name)[:64]!r}")
            args, kwargs = links.decode(h.get("args", [])), links.decode(h.get("kwargs", {"d": []}))
            if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
                raise ValueError("malformed request arguments")
            self.server.device = "cpu"
            _trace({"round": self.round, "nonce": nonce, "h": h})  # before: an item that kills us shows
            value = getattr(self.server, name)(*args, **kwargs).to(torch.long).contiguous()
            _trace({"round": self.round, "nonce": nonce, "elements": value.numel()})
            return value
        finally:
            self.current = [None] * len(self.keys)
            self.compute_s += time.perf_counter() - start

    def _answer(self, tag: tuple, h: dict, nonce: int, first: bool) -> None:
        try:
            value = self._make(h, nonce)
        except RuntimeFault:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to party 0, which stops with one line
            self.out.push(tag, {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}, None, first=True)
            return
        self.out.push(tag, {"tag": list(tag), "shape": list(value.shape), "c": self.compute_s}, value, first)

    def _mutate(self, tag: tuple, h: dict, nonce: int) -> None:
        """A mask mutation (no answer; a failure reaches party 0 at its next read)."""
        try:
            self._make(h, nonce)
        except RuntimeFault:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to party 0, which stops with one line
            self.out.push(tag, {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}, None, first=True)

    def _spec_one(self) -> None:
        """Make the predicted item at the cursor (never a mutation: those wait for party 0)."""
        slot, h = self.cursor, self.items[self.cursor]
        self.cursor += 1
        tag = (self.round, self.pids[slot])
        if answer_elements(h) > SPEC_LIMIT:
            self.out.push(tag, {"tag": list(tag), "skip": True}, None)
            return
        try:
            value = self._make(h, spec_nonce(*tag))
        except RuntimeFault:
            raise
        except Exception:  # noqa: BLE001 - a wrong guess may be malformed: party 0 asks again if it needs it
            self.out.push(tag, {"tag": list(tag), "skip": True}, None)
            return
        self.out.push(tag, {"tag": list(tag), "shape": list(value.shape), "c": self.compute_s}, value)

    def _more(self, msg: dict) -> None:
        """Guesses for slots from ``from`` on (a new step at 0; the rest replaced)."""
        items, start, pid = msg.get("items"), msg.get("from"), msg.get("pid")
        r = msg.get("round")
        if not (isinstance(items, list) and all(isinstance(h, dict) for h in items) and _index(start)
                and _index(pid) and _index(r)):
            raise RuntimeFault("party 0 sent a malformed schedule")
        if r != self.round:  # a new step (its first guesses may come later than its first slot)
            if r < self.round:
                raise RuntimeFault("party 0 sent guesses for a past step (protocol error)")
            self.round, self.items, self.pids, self.by_pid, self.cursor = r, [], [], {}, 0
            self.out.drop(lambda tag: len(tag) == 1)  # answers made for a past step are stale
        elif start < len(self.items):  # a restart: the old guesses from there on are abandoned
            floor = pid
            self.out.drop(lambda tag: len(tag) == 1 or tag[1] >= floor)
        del self.items[start:], self.pids[start:]
        gap = start - len(self.items)  # slots party 0 passed without guesses
        self.items += [None] * gap
        self.pids += [-1] * gap
        self.items += items
        self.pids += range(pid, pid + len(items))
        self.by_pid.update({pid + i: start + i for i in range(len(items))})
        # party 0 is at slot "at": what it passed is never needed (matched items it waited for)
        at = msg.get("at")
        at = at if _index(at) else start
        self.cursor, self.active = max(min(self.cursor, start), at), True

    def _handle(self, msg: dict) -> bool:
        ctl = msg.get("ctl")
        if msg.get("function") == "terminate":
            return False
        if ctl == "more":
            self._more(msg)
        elif ctl == "abandon":
            self.active = False
            self.out.drop(lambda tag: len(tag) == 1)
        elif ctl == "mut":
            r, pid = _tag(msg, 2)
            slot = msg.get("slot")
            if r != self.round or not self.active or self.by_pid.get(pid, -1) != slot:
                raise RuntimeFault("party 0 reported a mutation outside the schedule (protocol error)")
            self._mutate((r, pid), self.items[slot], spec_nonce(r, pid))
            self.cursor = slot + 1  # the guesses party 0 passed were made, or are not needed
        elif ctl == "late":
            r, pid = _tag(msg, 2)
            if r != self.round or pid not in self.by_pid:
                raise RuntimeFault("party 0 asked for an item outside the schedule (protocol error)")
            self._answer((r, pid), self.items[self.by_pid[pid]], spec_nonce(r, pid), first=True)
        elif ctl == "sync":
            (m,) = _tag(msg, 1)
            h = {k: msg.get(k) for k in ("function", "args", "kwargs")}
            if h["function"] in MUTATIONS:
                self.active = False  # party 0 abandoned the prediction before this (ahead.Schedule.begin)
                self._mutate((m,), h, sync_nonce(m))
            else:
                self._answer((m,), h, sync_nonce(m), first=True)
        else:
            raise RuntimeFault(f"party 0 sent an unknown message {str(ctl)[:32]!r}")
        return True

    def _has_input(self) -> bool:
        s = self.sock
        if s._in.pending or s.obj.pending():
            return True
        return bool(self._poll.poll(0))

    def _recv(self, n: int) -> bytes:
        """Read exactly n bytes, writing meanwhile (never waiting for our output to drain)."""
        s, buf, got = self.sock, bytearray(n), 0
        view = memoryview(buf)
        while got < n:
            self.out.pump()
            k = s._read_into(view[got:])
            got += k
            if got < n and not k:
                readable, _ = s._wait(True, self.out.pending(), None)
                if readable:
                    s._recv_some()
        s.plain_recv += n
        return bytes(buf)

    def _message(self) -> dict:
        size = int.from_bytes(self._recv(4), "big")
        if size > MESSAGE_LIMIT:
            raise LinkError(f"party 0 sent a {size}-byte message (limit {MESSAGE_LIMIT})")
        try:
            obj = json.loads(self._recv(size).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise LinkError("party 0 sent a malformed message (not JSON)") from None
        if not isinstance(obj, dict):
            raise LinkError("party 0 sent a message that is not a JSON object")
        return obj

    def _can_work(self) -> bool:
        if not self.active or self.cursor >= len(self.items) or self.out.queued_bytes >= BUDGET:
            return False
        return self.items[self.cursor]["function"] not in MUTATIONS  # a mutation waits for party 0

    def run(self) -> None:
        while True:
            while self._has_input():
                if not self._handle(self._message()):
                    return
            if self._can_work():
                self._spec_one()
                self.out.pump()
                continue
            self.out.pump()  # nothing to make: wait for party 0 (or for the socket to take more)
            readable, _ = self.sock._wait(True, self.out.pending(), None)
            if readable:
                self.sock._recv_some()


def _trace(record: dict) -> None:
    if TRACE:
        with open(TRACE, "a") as f:
            f.write(json.dumps(record) + "\n")


def _index(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _tag(msg: dict, n: int) -> list[int]:
    tag = msg.get("tag")
    tag = [tag] if n == 1 and isinstance(tag, int) else tag
    if not isinstance(tag, list) or len(tag) != n or not all(isinstance(x, int) and x >= 0 for x in tag):
        raise RuntimeFault("party 0 sent a malformed tag")
    return tag
