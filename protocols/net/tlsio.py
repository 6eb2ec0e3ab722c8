"""The transport under ``protocols.net.tls``: TLS driven by hand over a non-blocking socket.

``ssl.SSLObject`` over two ``MemoryBIO`` on a non-blocking socket, driven by ``poll`` in one
thread: ``exchange`` sends and receives large messages at once (no thread per direction, one round
per opening). Every wait has an absolute deadline (``time.monotonic()``), never a per-chunk
timeout: a peer that trickles bytes cannot stretch a handshake or a message.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import time

from mpcache.core.errors import RuntimeFault

MAX_MSG = 64 * 1024  # default cap of one JSON message (bytes)
CHUNK = 1 << 16  # plaintext per SSLObject.write: 4 TLS records
HIGH_WATER = 1 << 20  # encrypted bytes queued before we stop encrypting and wait for the socket
BUFFER = 1 << 21  # socket buffers


class LinkError(RuntimeFault):
    """The link failed: closed, timed out, or a malformed message (one line)."""


def deadline_in(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


class SecureSocket:
    """A TLS connection driven by hand (SSLObject + MemoryBIO over a non-blocking socket)."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server: bool, peer_name: str = "peer"):
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=server)
        self._setup(sock, peer_name)

    def _setup(self, sock: socket.socket, peer_name: str) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):  # a large opening in few wake-ups
                sock.setsockopt(socket.SOL_SOCKET, option, BUFFER)
        self.sock = sock
        self._wbuf, self._woff = bytearray(), 0  # encrypted bytes to send; _woff of them are sent
        self._rbuf = bytearray(1 << 20)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self.peer_name, self.peer_fingerprint, self.peer_role = peer_name, "", ""
        self.wire_sent = self.wire_recv = self.plain_sent = self.plain_recv = 0

    def _queued(self) -> int:
        return len(self._wbuf) - self._woff

    # low level
    def _wait(self, read: bool, write: bool, deadline: float | None) -> tuple[bool, bool]:
        mask = (select.POLLIN if read else 0) | (select.POLLOUT if write else 0)
        self._poll.modify(self.sock.fileno(), mask)
        if deadline is None:
            timeout = None
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LinkError(f"the {self.peer_name} sent nothing in time (deadline passed)")
            timeout = int(left * 1000) + 1
        events = self._poll.poll(timeout)
        if not events and deadline is not None and time.monotonic() >= deadline:
            raise LinkError(f"the {self.peer_name} sent nothing in time (deadline passed)")
        flags = events[0][1] if events else 0
        return bool(flags & (select.POLLIN | select.POLLHUP | select.POLLERR)), bool(flags & select.POLLOUT)

    def _send_some(self) -> None:
        if self._out.pending:
            if self._woff == len(self._wbuf):
                self._wbuf, self._woff = self._out.read(), 0  # no copy: bytes are sent as they are
            else:
                self._wbuf += self._out.read()
        if self._woff == len(self._wbuf):
            return
        try:
            with memoryview(self._wbuf) as view:  # released at once: the buffer may grow later
                n = self.sock.send(view[self._woff:])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise LinkError(f"the {self.peer_name} closed the connection ({exc.strerror or exc})") from None
        self.wire_sent += n
        self._woff += n
        if self._woff == len(self._wbuf):
            self._wbuf, self._woff = bytearray(), 0

    def _recv_some(self) -> None:
        try:
            n = self.sock.recv_into(self._rbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise LinkError(f"the {self.peer_name} closed the connection ({exc.strerror or exc})") from None
        if not n:
            raise LinkError(f"the {self.peer_name} closed the connection")
        self.wire_recv += n
        with memoryview(self._rbuf) as view:
            self._in.write(view[:n])

    def _flush(self, deadline: float | None) -> None:
        self._send_some()
        while self._queued():
            self._wait(False, True, deadline)
            self._send_some()

    def handshake(self, deadline: float | None) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush(deadline)
                self._wait(True, False, deadline)
                self._recv_some()
            except ssl.SSLError as exc:
                raise LinkError(f"TLS handshake with the {self.peer_name} failed ({exc.reason})") from None
        self._flush(deadline)

    def _read_into(self, view: memoryview) -> int:
        """Decrypt what is buffered into ``view``; 0 when a record is still incomplete."""
        try:
            n = self.obj.read(len(view), view)
        except ssl.SSLWantReadError:
            return 0
        except ssl.SSLZeroReturnError:
            raise LinkError(f"the {self.peer_name} closed the connection") from None
        except ssl.SSLError as exc:
            raise LinkError(f"TLS error on the link with the {self.peer_name} ({exc.reason})") from None
        if n == 0:
            raise LinkError(f"the {self.peer_name} closed the connection")
        return n

    def _put(self, chunk: memoryview) -> None:
        self.obj.write(chunk)

    # public
    def exchange(self, out, into, deadline: float | None = None) -> None:
        """Send all of ``out`` while receiving exactly ``len(into)`` bytes (either may be empty), in
        one thread: neither side's send waits for the other to read."""
        out = memoryview(out).cast("B")
        into = memoryview(into).cast("B")
        written = got = 0
        while True:
            while written < len(out) and self._queued() + self._out.pending < HIGH_WATER:
                k = min(CHUNK, len(out) - written)
                self._put(out[written:written + k])
                written += k
            self._send_some()
            while got < len(into):
                n = self._read_into(into[got:])
                if n == 0:
                    break
                got += n
            queued = self._queued()
            if got == len(into) and written == len(out) and not queued and not self._out.pending:
                break
            if not queued and (written < len(out) or got == len(into)):
                continue  # the socket took everything: encrypt more (or flush what TLS queued)
            readable, _ = self._wait(got < len(into), bool(queued), deadline)
            if readable:
                self._recv_some()
        self.plain_sent += len(out)
        self.plain_recv += len(into)

    def sendall(self, data, deadline: float | None = None) -> None:
        self.exchange(data, b"", deadline)

    def recv_exact(self, n: int, deadline: float | None = None) -> bytes:
        buf = bytearray(n)
        self.exchange(b"", buf, deadline)
        return bytes(buf)

    def recv_into(self, view, deadline: float | None = None) -> None:
        self.exchange(b"", view, deadline)

    def send_msg(self, obj: dict, deadline: float | None = None) -> None:
        body = json.dumps(obj, separators=(",", ":")).encode()
        self.sendall(len(body).to_bytes(4, "big") + body, deadline)

    def recv_msg(self, max_bytes: int = MAX_MSG, deadline: float | None = None,
                 timeout_s: float | None = None) -> dict:
        """One JSON object of at most ``max_bytes``; ``deadline`` is absolute (time.monotonic()),
        ``timeout_s`` relative: whichever is given bounds the whole message."""
        if timeout_s is not None:
            deadline = deadline_in(timeout_s) if deadline is None else min(deadline, deadline_in(timeout_s))
        size = int.from_bytes(self.recv_exact(4, deadline), "big")
        if size > max_bytes:
            raise LinkError(f"the {self.peer_name} sent a {size}-byte message (limit {max_bytes})")
        try:
            obj = json.loads(self.recv_exact(size, deadline).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise LinkError(f"the {self.peer_name} sent a malformed message (not JSON)") from None
        if not isinstance(obj, dict):
            raise LinkError(f"the {self.peer_name} sent a message that is not a JSON object")
        return obj

    @property
    def framing_bytes(self) -> int:
        """TLS bytes on the wire beyond the plaintext (headers, tags, handshake), both directions."""
        return self.wire_sent + self.wire_recv - self.plain_sent - self.plain_recv

    def close(self) -> None:
        try:
            self._poll.unregister(self.sock.fileno())
        except (KeyError, ValueError, OSError):
            pass
        self.sock.close()




class PlainSocket(SecureSocket):
    """The same transport without TLS: the bench-only ``--insecure`` baseline (cost of privacy)."""

    def __init__(self, sock: socket.socket, peer_name: str = "peer"):
        self._out = ssl.MemoryBIO()  # stays empty: ``_wbuf`` holds what is to be sent
        self._setup(sock, peer_name)
        self.peer_role = peer_name

    def _put(self, chunk: memoryview) -> None:
        self._wbuf += chunk

    def _recv_some(self) -> None:  # reading happens in _read_into, straight into the target
        return

    def _read_into(self, view: memoryview) -> int:
        try:
            n = self.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            raise LinkError(f"the {self.peer_name} closed the connection ({exc.strerror or exc})") from None
        if n == 0:
            raise LinkError(f"the {self.peer_name} closed the connection")
        self.wire_recv += n
        return n
