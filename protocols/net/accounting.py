"""Bytes, rounds and seconds per named phase; online traffic apart from the dealer's.

What is counted: CrypTen's communicator counts, on each party, the elements it sends *plus* the
elements it receives (8 bytes each) and one round per collective; it only counts with
``cfg.communicator.verbose`` on. In two-party computation one party's count is therefore the
total traffic on the wire between the two parties (both directions), and that is the figure we
report (party 0's). Dealer traffic (TTP requests and the shares of C it sends party 0) goes
through the same communicator: we measure it around each dealer request and subtract it from the
online figure. With TFP the dealer is party 0 itself and dealer traffic is zero.

Estimated wall time under a network preset: compute_s + bytes / bandwidth + rounds * RTT.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class Network:
    name: str
    bandwidth_bits_s: float
    rtt_s: float


NETWORKS = {
    "lan": Network("lan", 1e9, 0.5e-3),  # 1 Gbit/s, 0.5 ms RTT
    "wan": Network("wan", 100e6, 40e-3),  # 100 Mbit/s, 40 ms RTT
}


@dataclass
class Cost:
    online_bytes: float = 0.0
    rounds: int = 0
    compute_s: float = 0.0
    dealer_bytes: float = 0.0
    dealer_rounds: int = 0

    def _zip(self, other: Cost, op) -> Cost:
        # Field by field, not through asdict (a deep copy): phases are flushed thousands of times
        # per decode step.
        return Cost(*(op(getattr(self, k), getattr(other, k)) for k in _COST_FIELDS))

    def __add__(self, other: Cost) -> Cost:
        return self._zip(other, lambda x, y: x + y)

    def __sub__(self, other: Cost) -> Cost:
        return self._zip(other, lambda x, y: x - y)

    def scaled(self, factor: float) -> Cost:
        return Cost(**{k: v * factor for k, v in asdict(self).items()})

    def wall_s(self, net: Network) -> float:
        return self.compute_s + self.online_bytes * 8 / net.bandwidth_bits_s + self.rounds * net.rtt_s

    def to_dict(self, networks: dict[str, Network] | None = None) -> dict:
        out = asdict(self)
        for net in (networks or NETWORKS).values():
            out[f"{net.name}_s"] = self.wall_s(net)
        return out


_COST_FIELDS = tuple(f.name for f in fields(Cost))


class Meter:
    """Accumulates a Cost per phase. Phases nest; the innermost phase gets the cost.

    ``compute_s`` is the measured wall time of the phase on this machine (loopback, so network
    time is small next to local work; it still includes waiting for the other party).
    """

    def __init__(self, comm=None):
        self.comm = comm
        self.phases: dict[str, Cost] = {}
        self._stack: list[str] = []
        self._owner: str | None = None  # an enclosing phase that takes every cost inside it
        self._dealer_bytes, self._dealer_rounds, self._dealer_depth = 0.0, 0, 0
        self._mark = self._read()

    def _raw(self) -> tuple[float, int]:
        if self.comm is None:
            return 0.0, 0
        return float(self.comm.comm_bytes), int(self.comm.comm_rounds)

    def _read(self) -> Cost:
        nbytes, rounds = self._raw()
        return Cost(
            nbytes - self._dealer_bytes, rounds - self._dealer_rounds, time.perf_counter(),
            self._dealer_bytes, self._dealer_rounds,
        )

    def _flush(self) -> None:
        now = self._read()
        name = self._stack[-1] if self._stack else "other"
        self.phases[name] = self.phases.get(name, Cost()) + (now - self._mark)
        self._mark = now

    @contextmanager
    def phase(self, name: str, owns_inner: bool = False) -> Iterator[None]:
        """Attribute the cost inside to ``name``. With ``owns_inner`` the phases opened inside (the
        softmax, the top-k of a policy's selection) count as ``name`` too."""
        if self._owner is not None:
            yield
            return
        self._flush()
        self._stack.append(name)
        if owns_inner:
            self._owner = name
        try:
            yield
        finally:
            self._flush()
            self._stack.pop()
            if owns_inner:
                self._owner = None

    @contextmanager
    def debug(self) -> Iterator[None]:
        """Test-only reveals: their traffic goes to the phase "debug", never to the enclosing one."""
        self._flush()
        try:
            yield
        finally:
            now = self._read()
            self.phases["debug"] = self.phases.get("debug", Cost()) + (now - self._mark)
            self._mark = now

    @contextmanager
    def dealer(self) -> Iterator[None]:
        """Wrap a dealer request: its traffic counts as dealer traffic, its rounds not as online."""
        self._dealer_depth += 1
        before = self._raw()
        try:
            yield
        finally:
            self._dealer_depth -= 1
            if not self._dealer_depth:  # nested requests: the outermost one counts
                after = self._raw()
                self._dealer_bytes += after[0] - before[0]
                self._dealer_rounds += after[1] - before[1]

    def total(self) -> Cost:
        self._flush()
        total = Cost()
        for cost in self.phases.values():
            total = total + cost
        return total

    def snapshot(self) -> dict[str, Cost]:
        self._flush()
        return {k: Cost(**asdict(v)) for k, v in self.phases.items()}


def diff(after: dict[str, Cost], before: dict[str, Cost]) -> dict[str, Cost]:
    return {k: v - before.get(k, Cost()) for k, v in after.items() if k}


def total(phases: dict[str, Cost]) -> Cost:
    out = Cost()
    for cost in phases.values():
        out = out + cost
    return out


@dataclass
class StepLog:
    """Per generated token: the cost since the previous token (prefill for the first)."""

    steps: list[dict[str, Cost]] = field(default_factory=list)
    _last: dict[str, Cost] = field(default_factory=dict)

    def mark(self, meter: Meter) -> None:
        now = meter.snapshot()
        self.steps.append(diff(now, self._last))
        self._last = now
