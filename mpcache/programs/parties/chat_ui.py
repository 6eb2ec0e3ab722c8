"""What the chat's user sees and types: the message prompt, ``/file``, the prefill progress line,
and the per-turn and session lines (latency included). The client's side only: nothing here
touches the control channel or the secret computation.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mpcache.core.errors import say
from protocols.net.accounting import Cost

FILE_MAX_BYTES = 1 << 20  # a /file message: a text document, not a data set
CONFIRM_TOKENS = 256  # a /file message this long asks before it is sent (MPC prefill is slow)
SPIN_EVERY_S = 0.5  # on a terminal: the progress line is redrawn this often
LINE_EVERY_S = 10.0  # not a terminal (a log, a test): one progress line this often, none before


@dataclass
class Totals:
    turns: int = 0
    tokens: int = 0
    cost: Cost = field(default_factory=Cost)


def read_message() -> str | None:
    """One line from stdin; None at the end of input. Undecodable or empty lines are refused here."""
    while True:
        sys.stdout.write("you> ")
        sys.stdout.flush()
        raw = sys.stdin.buffer.readline()
        if not raw:
            return None
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            say(f"[refused: the message is not valid UTF-8 (byte {exc.start}); nothing was sent]")
            continue
        if not text:
            say("[refused: empty message; type some text, or /quit]")
            continue
        return text


def read_file(path: str) -> str:
    """The text of a local file for ``/file PATH`` (UTF-8, at most FILE_MAX_BYTES). ValueError with
    the reason, shown as one line; the file never leaves the client except as secret shares."""
    p = Path(path.strip()).expanduser()
    if not path.strip():
        raise ValueError("/file needs a path: /file notes.txt")
    if not p.is_file():
        raise ValueError(f"no file at {str(p)!r}")
    if p.stat().st_size > FILE_MAX_BYTES:
        raise ValueError(f"{p.name} is {p.stat().st_size:,} bytes, over the {FILE_MAX_BYTES:,}-byte limit")
    try:
        text = p.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p.name} is not UTF-8 text (byte {exc.start})") from None
    if not text:
        raise ValueError(f"{p.name} is empty")
    return text


def confirm(question: str) -> bool:
    """Ask on the terminal; only a line starting with y sends. End of input counts as no."""
    sys.stdout.write(f"{question} [y/N] ")
    sys.stdout.flush()
    raw = sys.stdin.buffer.readline()
    return raw.strip().lower().startswith(b"y")


class Progress:
    """A status line while a turn's chunk goes through the model: layers done (the chunk passes
    the layers in order, all its tokens together), MB of this party's traffic so far, seconds.
    On a terminal a line redrawn in place, cleared at the first answer token; otherwise one line
    every LINE_EVERY_S, so a log shows a long prefill is alive without a flood of lines."""

    def __init__(self, n_tokens: int, layers: int, comm, stream=None):
        self.n, self.layers, self.comm = n_tokens, layers, comm
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done, self.bytes0 = 0, self._bytes()
        self.start = time.perf_counter()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _bytes(self) -> float:
        return float(getattr(self.comm, "comm_bytes", 0.0))

    def layer(self, done: int, n_fed: int) -> None:
        """The transformer's per-layer hook (main thread): only the chunk's forward pass counts."""
        if n_fed == self.n:
            self.done = done

    def line(self) -> str:
        mb = (self._bytes() - self.bytes0) / 1e6
        pct = 100 * self.done / self.layers
        return (f"[prefill {self.n} tokens: layer {self.done}/{self.layers} ({pct:.0f}%), "
                f"{mb:,.1f} MB so far, {time.perf_counter() - self.start:.0f} s]")

    def _run(self) -> None:
        spin = "|/-\\"
        k = 0
        every = SPIN_EVERY_S if self.tty else LINE_EVERY_S
        while not self.stopped.wait(every):
            if self.tty:
                self.stream.write(f"\r{spin[k % 4]} {self.line()}\x1b[K")
                k += 1
            else:
                self.stream.write(self.line() + "\n")
            self.stream.flush()

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        self.thread.join(timeout=2 * SPIN_EVERY_S)
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def latency(result, seconds: float) -> str:
    """Time to the first answer token (the turn's prefill and one step) and per answer token after."""
    first = result.first_token_s
    rest = len(result.new_ids) - 1
    per = f", then {(seconds - first) / rest:.2f} s/token" if rest > 0 else ""
    return f"first token {first:.1f} s{per}"


def turn_line(k: int, turn, conv, seconds: float) -> str:
    c, r = turn.cost, turn.result
    dealer = (f"; dealer {c.dealer_bytes / 1e6:.1f} MB, {c.dealer_rounds} requests"
              if c.dealer_bytes or c.dealer_rounds else "; dealer: none (TFP)")
    staged = ", stage ran" if r.staged else ""
    return (f"[turn {k}: {r.prompt_len} prompt + {len(r.new_ids)} answer tokens; online "
            f"{c.online_bytes / 1e6:.1f} MB, {c.rounds} rounds{dealer}; {seconds:.1f} s, "
            f"{latency(r, seconds)}; cache {r.cache_tokens} tokens{staged}, position "
            f"{conv.position}/{conv.model.config.max_positions}]")


def stats_line(totals: Totals, conv) -> str:
    c = totals.cost
    return (f"[session: {totals.turns} turns, {totals.tokens} tokens; online {c.online_bytes / 1e6:.1f} MB, "
            f"{c.rounds} rounds; dealer {c.dealer_bytes / 1e6:.1f} MB; {c.compute_s:.1f} s; secret cache "
            f"{conv.cache_tokens} tokens, position {conv.position}/{conv.model.config.max_positions}]\n"
            f"[cache: {conv.kept()}; which tokens were kept stays secret]")
