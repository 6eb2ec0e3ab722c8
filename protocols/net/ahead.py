"""The TTP dealer works ahead: the parties' side (the dealer's: ``protocols.net.ahead_server``).

Without it every piece of correlated randomness is a synchronous request from party 0 to the
dealer (~13,000 round trips per SmolLM2 token). Its material depends on public shapes only, and
the requests of a decode step repeat those of the previous step with shapes and mask keys that grow
by the same amount each step. So at each token boundary both parties *predict* the next step's
requests (``predict``: the last step's, each integer extrapolated from the last two steps), party 0
sends the prediction to the dealer, and the dealer makes the material of every predicted item ahead
and streams it; party 0 takes each answer from the link when the program reaches that item.

Every dealer operation is an *item* (``begin``: both parties, same order, same public header).
An item that equals its prediction is a *spec* item: its randomness comes from the item stream
(round, slot) (``protocols.ring.itemstream``), and its answer is already on the way. Any other item
is *synchronous*: party 0 asks for it (item stream: a counter of synchronous items). The decision is
a deterministic function of public headers, so party 1 takes the same one without a message, and
material made for a mispredicted item is never used by anyone. Mask mutations (new, extend, derive,
forget) are sent by party 0 when reached, without waiting (they have no answer); the dealer holds
its spec work at a predicted mutation until the real one arrives, so every spec answer sees exactly
the masks the parties have. A mispredicted mutation, or too many mismatches, abandons the rest of
the step's prediction (synchronous from there on).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import crypten
import torch
from crypten import communicator
from crypten.mpc.provider.ttp_provider import TrustedThirdParty, TTPClient

from mpcache.core.errors import RuntimeFault
from protocols.net import links
from protocols.net.predict import MIN_PERIOD, Periodic, header, predict
from protocols.net.tlsio import SecureSocket
from protocols.ring import csprng
from protocols.ring.itemstream import ItemKeys, ItemStream, spec_nonce, sync_nonce

MUTATIONS = frozenset({"fixed_new", "fixed_extend", "fixed_derive", "fixed_forget"})
MISMATCH_LIMIT = 8  # non-mutating mismatches tolerated per step before the prediction is abandoned
FRAME_LIMIT = 4096  # an answer's JSON header, at most
OFF, ON = b"\x00", b"\x01"  # the dealer's word on the mode, sent after each party's stream key
_MISSING = object()


@dataclass
class Stats:
    """Party 0's view of the dealer (cumulative; the bench reports differences per token)."""

    items: int = 0
    spec: int = 0  # items whose answer was made ahead (no round trip)
    sync: int = 0  # synchronous requests (a round trip each; mutations: no wait)
    late: int = 0  # predicted items the dealer had not made (made on request)
    abandons: int = 0
    wait_s: float = 0.0  # party 0 blocked on the dealer's link (the dealer's part of the online time)
    ahead_bytes: int = 0  # answers made ahead and used
    sync_bytes: int = 0  # answers of synchronous requests
    wasted_bytes: int = 0  # answers made ahead for mispredicted items (discarded)
    control_bytes: int = 0  # party 0's messages to the dealer (guesses, mutations, requests)
    dealer_s: float = 0.0  # the dealer's compute for party 0's material so far (offline time)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Schedule:
    """Both parties: the item decisions and the current item stream; party 0: the link.

    ``pred[slot]`` is the guess for a slot of this step and ``pid[slot]`` its prediction id: ids are
    never reused within a step (a new guess for a slot gets a new id), and an item's stream nonce
    is (step, id), so a slot guessed twice never draws the same keystream twice."""

    keys: ItemKeys
    rank: int
    sock: SecureSocket | None = None  # party 0 only
    timeout_s: float = 60.0
    round: int = 0
    slot: int = 0
    sync_count: int = 0
    live: bool = False
    periodic: int = 0  # the period the live guesses come from (0: from the previous steps)
    mismatches: int = 0
    quiet_until: int = 0  # no periodic restart before this slot (after an abandon)
    next_pid: int = 0
    pred: list = field(default_factory=list)
    pid: list = field(default_factory=list)
    seen: Periodic = field(default_factory=Periodic)
    history: deque = field(default_factory=lambda: deque(maxlen=3))
    item: tuple | None = None  # ("spec", round, pid, header) | ("sync", counter, header)
    current: ItemStream | None = None
    stash: dict = field(default_factory=dict)  # answers read ahead of their use: tag -> tensor
    stats: Stats = field(default_factory=Stats)

    # --- both parties -------------------------------------------------------------------------------
    def stream(self) -> csprng.Stream:
        if self.current is None:
            raise RuntimeFault("randomness: a dealer draw outside any dealer item (refused)")
        return self.current

    def begin(self, name: str, args, kwargs: dict | None = None) -> None:
        h = header(name, args, kwargs)
        self.seen.observe(h)
        slot, self.slot = self.slot, self.slot + 1
        p = self.pred[slot] if self.live and slot < len(self.pred) else None
        self.stats.items += 1
        if p is not None and p == h:
            pid = self.pid[slot]
            self.item = ("spec", self.round, pid, h)
            self.current = self.keys.stream(spec_nonce(self.round, pid))
            self.stats.spec += 1
            if name in MUTATIONS:
                self._send({"ctl": "mut", "tag": [self.round, pid], "slot": slot})
        else:
            if self.live and (name in MUTATIONS or (p is not None and p["function"] in MUTATIONS)
                              or (p is not None and self._mismatch())):
                self._abandon()
            self.item = ("sync", self.sync_count, h)
            self.current = self.keys.stream(sync_nonce(self.sync_count))
            if name in MUTATIONS:  # before any new guess: the dealer must apply it first
                self._send({"ctl": "sync", "tag": self.sync_count, **h})
            self.sync_count += 1
            self.stats.sync += 1
        self._look_ahead()

    def _mismatch(self) -> bool:
        self.mismatches += 1
        return self.mismatches > MISMATCH_LIMIT

    def _abandon(self) -> None:
        """The dealer's masks follow the real mutations only: stop its guesses for this step."""
        self.live = False
        self.quiet_until = self.slot + MIN_PERIOD
        self.stats.abandons += 1
        self._send({"ctl": "abandon", "round": self.round})

    def _look_ahead(self) -> None:
        """Guess the next layer when the requests repeat (no guess left, or guesses by period
        running out): both parties, same slots, same guesses."""
        n = self.slot  # the next slot
        left = len(self.pred) - n if self.live else 0  # guesses not yet reached
        if left > 0 and (not self.periodic or left > self.periodic // 2):
            return
        if not self.live and n < self.quiet_until:
            return
        p = self.periodic if left > 0 else self.seen.period()
        if not p:
            return
        start = len(self.pred) if left > 0 else n
        guesses = self.seen.extend(self.pred, start, p, p)
        if not guesses:
            return
        del self.pred[start:], self.pid[start:]
        gap = start - len(self.pred)  # slots passed without guesses
        self.pred += [None] * gap
        self.pid += [-1] * gap
        self.pred += guesses
        self.pid += range(self.next_pid, self.next_pid + len(guesses))
        if not self.live:  # a restart: what was read ahead belongs to abandoned guesses
            self.mismatches, self.stash = 0, {}
        self.live, self.periodic = True, p
        self._send({"ctl": "more", "round": self.round, "from": start, "at": n, "pid": self.next_pid,
                    "items": guesses})
        self.next_pid += len(guesses)

    def boundary(self) -> None:
        """A token ends (both parties, same point): predict the next step; party 0 sends it."""
        self.history.append(self.seen.items)
        self.seen = Periodic()
        self.slot, self.mismatches, self.periodic, self.quiet_until = 0, 0, 0, 0
        self.round += 1
        self.pred = predict(list(self.history))
        self.pid = list(range(len(self.pred)))
        self.next_pid = len(self.pred)
        self.live = bool(self.pred)
        self.stash = {}  # answers of past steps are stale
        if self.pred:
            self._send({"ctl": "more", "round": self.round, "from": 0, "at": 0, "pid": 0, "items": self.pred})

    # --- party 0 ----------------------------------------------------------------------------------------
    def _send(self, msg: dict) -> None:
        if self.sock is not None:
            before = self.sock.plain_sent
            self.sock.send_msg(msg, time.monotonic() + self.timeout_s)
            self.stats.control_bytes += self.sock.plain_sent - before

    def fetch(self, name: str) -> torch.Tensor:
        """Party 0's answer for the current item (the request ``name`` must be the item's)."""
        if self.item is None or self.item[-1]["function"] != name:
            raise RuntimeFault(f"dealer request {name!r} outside its item (refused)")
        item, self.item = self.item, None
        if name in MUTATIONS:  # no answer; party 0 announced it at begin() ("mut" or "sync")
            return torch.zeros(1, dtype=torch.long)
        start = time.perf_counter()
        try:
            if item[0] == "spec":
                return self._await(("spec", item[1], item[2]))
            self._send({"ctl": "sync", "tag": item[1], **item[2]})
            return self._await(("sync", item[1]))
        finally:
            self.stats.wait_s += time.perf_counter() - start

    def _await(self, tag: tuple) -> torch.Tensor:
        frame = self.stash.pop(tag, _MISSING)
        asked = False
        while True:
            if frame is None:  # the dealer did not make it ahead (too large, failed): ask for it now
                if asked:
                    raise RuntimeFault("the dealer did not make a requested item")
                asked = True
                self.stats.late += 1
                self._send({"ctl": "late", "tag": [tag[1], tag[2]]})
            elif frame is not _MISSING:
                self._count(tag, frame)
                return frame
            got, frame = self._read()
            if got == tag:
                continue
            if self._later(got):
                self.stash[got] = frame  # a later item of this step, read while waiting for this one
            elif frame is not None:
                self.stats.wasted_bytes += frame.numel() * 8
            frame = _MISSING

    def _later(self, got: tuple) -> bool:
        """An answer for a slot after the current one (prediction ids grow along the slots)."""
        if not self.live or got[0] != "spec" or got[1] != self.round or self.slot >= len(self.pid):
            return False
        return got[2] >= self.pid[self.slot]

    def _read(self) -> tuple[tuple, torch.Tensor | None]:
        deadline = time.monotonic() + self.timeout_s
        msg = self.sock.recv_msg(FRAME_LIMIT, deadline)
        if "error" in msg:
            raise RuntimeFault(f"the dealer failed: {str(msg['error'])[:200]}")
        tag, shape = msg.get("tag"), msg.get("shape")
        if isinstance(msg.get("c"), int | float):
            self.stats.dealer_s = float(msg["c"])
        if not (isinstance(tag, list) and len(tag) in (1, 2) and all(_index(n) for n in tag)):
            raise RuntimeFault("the dealer sent a malformed answer")
        key = ("sync", tag[0]) if len(tag) == 1 else ("spec", tag[0], tag[1])
        if msg.get("skip"):
            return key, None
        if not isinstance(shape, list) or not all(isinstance(n, int) and 0 <= n < 1 << 40 for n in shape):
            raise RuntimeFault("the dealer sent a malformed answer")
        result = torch.empty(shape, dtype=torch.long)
        self.sock.recv_into(links.tensor_bytes(result), deadline)
        return key, result

    def _count(self, tag: tuple, frame: torch.Tensor) -> None:
        """Dealer traffic as CrypTen counts it (8 B per element); a round only for a round trip."""
        if tag[0] == "spec":
            self.stats.ahead_bytes += frame.numel() * 8
        else:
            self.stats.sync_bytes += frame.numel() * 8
        if crypten.cfg.communicator.verbose:
            comm = communicator.get()
            if tag[0] == "spec":
                comm.comm_bytes += frame.numel() * comm.BYTES_PER_ELEMENT
            else:
                comm._log_communication(0)  # the request (its header bytes are not counted)
                comm._log_communication(frame.numel())


def _index(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


_state: dict = {"schedule": None}


def schedule() -> Schedule | None:
    return _state["schedule"]


def stats() -> dict:
    """Party 0's cumulative dealer figures ({} when the dealer does not work ahead)."""
    s = _state["schedule"]
    return s.stats.as_dict() if s is not None else {}


def start(client, key: bytes, rank: int, sock: SecureSocket | None, timeout_s: float) -> None:
    """A party, after the dealer said ON: its dealer draws come from the current item's stream."""
    s = Schedule(ItemKeys(key), rank, sock if rank == 0 else None, timeout_s)
    _state["schedule"] = s
    client.generator = csprng._placeholder()
    csprng.bind_generator(client.generator, s.stream)


def stop() -> None:
    _state["schedule"] = None


# --- hooks on CrypTen's TTP client and provider (installed by dealerlink.install_party) --------------
def begin_item(self, name: str, args, kwargs: dict | None = None) -> None:
    s = _state["schedule"]
    if s is not None:
        s.begin(name, args, kwargs)


def boundary(self) -> None:
    s = _state["schedule"]
    if s is not None:
        s.boundary()


_PROVIDER = {  # CrypTen's dealer calls -> the request each makes (its positional sizes first)
    "generate_additive_triple": "additive", "square": "square", "generate_binary_triple": "binary",
    "wrap_rng": "wraps", "B2A_rng": "B2A",
}


def _provider_item(method, name: str):
    def wrapped(self, *args, device=None, **kwargs):
        TTPClient.get().begin_item(name, args, kwargs)
        return method(self, *args, device=device, **kwargs)

    wrapped._mpcache_ahead = True
    return wrapped


def install(inner_client_cls) -> None:
    """Every dealer call of CrypTen's provider begins an item; the client gets the item hooks."""
    inner_client_cls.begin_item = begin_item
    inner_client_cls.boundary = boundary
    for method_name, request in _PROVIDER.items():
        method = getattr(TrustedThirdParty, method_name)
        if not getattr(method, "_mpcache_ahead", False):
            setattr(TrustedThirdParty, method_name, _provider_item(method, request))
