"""What a network observer sees: the parties' direct link and the dealer links go through a
recording TCP relay. On TLS no plaintext the parties exchanged (shares, dealer answers), no opened
value, no key and no token id of the run appears in the captured bytes; with the bench-only
insecure baseline the same search finds them (so the search would see a leak). Wrong keys and
strangers are refused with one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from protocols.net.launch import free_port, torchrun_command
from protocols.net.tls import ephemeral, load

sys.path.insert(0, str(Path(__file__).parent))
from test_mpc_two_party import check_against_plain  # noqa: E402

PARTY = str(Path(__file__).with_name("mpc_party.py"))


class Relay:
    """Forwards every connection on its port to ``target`` and records all bytes, both ways."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.captured = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                back = socket.create_connection(self.target, timeout=30)
            except OSError:
                conn.close()
                continue
            for a, b in ((conn, back), (back, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(1 << 16):
                with self.lock:
                    self.captured += data
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def _run(tmp_path, env_extra: dict, *extra, nproc=3, timeout=300):
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "client.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **env_extra)
    cmd = torchrun_command([PARTY, "--out", str(out), *extra], nproc)
    return subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True), out


def _relayed_run(tmp_path, insecure: bool, new_tokens: int = 3):
    link_port, dealer_port = free_port(), free_port()
    relays = [Relay(link_port), Relay(dealer_port)]
    env = {"MPCACHE_LINK_PORT": str(link_port), "MPCACHE_LINK_ADVERTISE": f"127.0.0.1:{relays[0].port}",
           "MPCACHE_DEALER_PORT": str(dealer_port), "MPCACHE_DEALER_ADVERTISE": f"127.0.0.1:{relays[1].port}"}
    if insecure:
        env.update(MPCACHE_INSECURE="1", MPCACHE_INSECURE_RNG="mt19937")
    proc, out = _run(tmp_path, env, "--dealer", "ttp", "--new-tokens", str(new_tokens), "--capture-dump")
    for r in relays:
        r.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    dumps = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]
    return record, dumps, [bytes(r.captured) for r in relays]


PATTERNS = 400  # per kind: each is searched in the whole capture (the dealer working ahead sends thousands)


def _spread(values: list[bytes], most: int = PATTERNS) -> list[bytes]:
    """At most ``most`` of ``values``, spread evenly over the run (first and last included)."""
    if len(values) <= most:
        return values
    step = (len(values) - 1) / (most - 1)
    return [values[round(i * step)] for i in range(most)]


def _secrets(record, dumps) -> dict[str, list[bytes]]:
    """Byte patterns of the run's secrets: plaintext messages, opened sums, keys, token ids."""
    kinds = ("sent", "received", "opened", "keys")
    found = {k: _spread([bytes.fromhex(x) for d in dumps for x in d[k]]) for k in kinds}
    tokens = []
    for ids in (record["prompt_ids"], record["tokens"]):
        tokens += [struct.pack(f"<{len(ids)}q", *ids), struct.pack(f"<{len(ids)}q", *[t << 16 for t in ids]),
                   json.dumps(ids).encode(), json.dumps(ids, separators=(",", ":")).encode()]
    found["token ids"] = tokens
    return found


def test_capture_shows_no_secret_and_session_completes(tmp_path):
    record, dumps, captured = _relayed_run(tmp_path / "tls", insecure=False)
    check_against_plain(record)  # the relayed TLS session computes what plaintext computes
    link, dealer = captured
    assert len(link) > 100_000 and len(dealer) > 10_000, (len(link), len(dealer))
    wire = link + b"\0" + dealer
    patterns = _secrets(record, dumps)
    assert min(len(v) for k, v in patterns.items() if k != "keys") >= 2 and len(patterns["keys"]) == 4
    for kind, values in patterns.items():
        leaked = [v.hex()[:32] for v in values if v in wire]
        assert not leaked, f"{kind} visible on the wire: {leaked[:3]}"


def test_capture_finds_them_on_the_insecure_baseline(tmp_path):
    """The positive control: plain sockets carry the same plaintext, and the search finds it (one
    token is enough for every kind of pattern: 32 s instead of 66 s)."""
    record, dumps, captured = _relayed_run(tmp_path / "plain", insecure=True, new_tokens=1)
    wire = captured[0] + b"\0" + captured[1]
    patterns = _secrets(record, dumps)
    for kind in ("sent", "received", "keys"):
        seen = sum(v in wire for v in patterns[kind])
        assert seen == len(patterns[kind]), f"{kind}: {seen} of {len(patterns[kind])} found"


def test_wrong_pin_is_refused_with_one_line(tmp_path):
    proc, _ = _run(tmp_path, {"MPCACHE_PEER_FINGERPRINT": ephemeral().fingerprint}, "--timeout", "40",
                   nproc=2, timeout=120)
    assert proc.returncode == 3, proc.stderr
    client = [ln for ln in proc.stderr.splitlines() if ln.startswith("mpcache: client: ")]
    assert len(client) == 1 and "the server's key" in client[0], proc.stderr
    assert "is not the pinned" in client[0]
    assert "refused a connection" in proc.stderr  # the server's one line: it refused and went on


def test_wrong_session_secret_is_refused_with_one_line(tmp_path):
    """Server and client started apart (as on two machines) with different secrets."""
    port, procs = free_port(), []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", MPCACHE_SESSION_SECRET=os.urandom(32).hex())
        cmd = [sys.executable, PARTY, "--out", str(tmp_path / "x.json"), "--timeout", "10"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    try:
        errs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
    assert [p.returncode for p in procs] == [3, 3], errs
    client = [ln for ln in errs[1].splitlines() if ln.strip()]
    assert len(client) == 1 and "session secret" in client[0], errs[1]
    assert "refused a connection" in errs[0] and "session secret" in errs[0], errs[0]


def test_silent_stranger_on_the_direct_port_does_not_stop_the_session(tmp_path):
    port = free_port()
    held: list[socket.socket] = []
    stop = threading.Event()

    def stranger() -> None:  # connects as soon as the port listens, then says nothing
        while not stop.is_set() and len(held) < 3:
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=1))
            except OSError:
                time.sleep(0.02)

    threading.Thread(target=stranger, daemon=True).start()
    try:
        proc, out = _run(tmp_path, {"MPCACHE_LINK_PORT": str(port)}, "--new-tokens", "2", nproc=2)
    finally:
        stop.set()
        for s in held:
            s.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert held, "the stranger never got in"
    check_against_plain(json.loads(out.read_text()))


@pytest.mark.parametrize("pinned", [False, True])
def test_expect_dealer_refuses_any_other_dealer(tmp_path, pinned):
    """--expect-dealer with another key: the client refuses the dealer (one line). With the
    dealer's own key pinned (--key on every process: local runs share the argv), it runs."""
    key = tmp_path / "dealer.pem"
    subprocess.run([sys.executable, "-m", "mpcache", "keys", str(key)], check=True, capture_output=True)
    fp = load(key).fingerprint if pinned else ephemeral().fingerprint
    proc, _ = _run(tmp_path, {}, "--dealer", "ttp", "--new-tokens", "2", "--key", str(key), "--expect-dealer",
                   fp, "--timeout", "30", timeout=200)
    if pinned:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"dealer authenticated, key fingerprint {fp}" in proc.stderr
    else:
        assert proc.returncode == 3, proc.stderr
        assert "the dealer's key" in proc.stderr and "is not the pinned" in proc.stderr, proc.stderr
