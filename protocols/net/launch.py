"""Start the parties on this machine with ``torch.distributed.run`` (torchrun), on a free port.

``python -m protocols.net.launch`` (console script ``mpcache-torchrun``) takes torchrun's arguments and
runs it the same way, except that a failed party ends it with that party's own one-line message and
exit status instead of torchrun's ChildFailedError traceback (exit 1), and that a local launch (one
node, loopback rendezvous) gives its parties an ephemeral session secret (MPCACHE_SESSION_SECRET)
to authenticate their TLS links. Leading link flags (``--key PATH``, ``--peer-fingerprint FP``,
``--expect-dealer FP``, ``--insecure-network``, before torchrun's arguments) reach every party.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

from protocols.net import links
from protocols.net.runtime import world_size

SECRET_ENV = "MPCACHE_SESSION_SECRET"
LINK_FLAGS = ("--key", "--peer-fingerprint", "--expect-dealer", "--insecure-network")


def _link_flags(argv: list[str]) -> list[str]:
    """Leading --key PATH / --peer-fingerprint FP / --expect-dealer FP / --insecure-network (before
    torchrun's own arguments) go to every party through the environment."""
    parser = argparse.ArgumentParser(prog="mpcache-torchrun", add_help=False)
    links.add_flags(parser)
    n = 0
    while n < len(argv) and argv[n].split("=")[0] in LINK_FLAGS:
        n += 1 if "=" in argv[n] or argv[n] == "--insecure-network" else 2
    links.apply_flags_or_exit(parser.parse_args(argv[:n]))
    return argv[n:]


def make_local_secret() -> None:
    """Local launches authenticate the parties' links with an ephemeral session secret (kept if the
    user set one)."""
    os.environ.setdefault(SECRET_ENV, secrets.token_hex(32))


def _loopback(host: str | None) -> bool:
    try:
        return host is None or ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port that binds now, drawn below the kernel's ephemeral range: a port the OS hands out
    (bind to 0) can be taken by any outgoing connection before the party binds it (seen in CI)."""
    low, high = _ephemeral_range()
    span = (10000, low - 1) if low > 11000 else (high + 1, 65535)
    for _ in range(50):
        port = secrets.randbelow(span[1] - span[0] + 1) + span[0]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(script_args: list[str], nproc: int, port: int | None = None) -> list[str]:
    """``python -m protocols.net.launch`` (torchrun) for ``nproc`` local parties running ``script_args``."""
    return [
        sys.executable, "-m", "protocols.net.launch", f"--nproc_per_node={nproc}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={port or free_port()}",
        *script_args,
    ]


def launch_self(dealer: str) -> int:
    """Re-run this script (``sys.argv``) as the local parties of a session with ``dealer``."""
    return launch_local([str(Path(sys.argv[0]).resolve()), *sys.argv[1:]], world_size(dealer))


def launch_local(script_args: list[str], nproc: int, timeout_s: float | None = None) -> int:
    """Run the parties in the foreground (their output goes to ours); returns the exit status."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONWARNINGS"] = "ignore"
    env.setdefault(SECRET_ENV, secrets.token_hex(32))  # local parties: an ephemeral session secret
    port = free_port()
    print(f"[starting {nproc} local parties; rendezvous on 127.0.0.1:{port}]", file=sys.stderr, flush=True)
    try:
        command = torchrun_command(script_args, nproc, port)
        return subprocess.run(command, env=env, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        print(f"mpcache: the parties did not finish within {timeout_s:.0f} s", file=sys.stderr)
        return 3


def torchrun_main(argv: list[str] | None = None) -> int:
    """torchrun whose failures are one line: the failed party's own message, then its exit status
    (2 bad input, 3 fault, 130 interrupted; see ``protocols.net.runtime.run_party``)."""
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # else torchrun warns about it for every run
    argv = _link_flags(list(sys.argv[1:] if argv is None else argv))
    args = get_args_parser().parse_args(argv)
    if str(args.nnodes) in ("1", "1:1") and _loopback(args.master_addr):
        make_local_secret()  # all parties are ours: they share a fresh secret through the environment
    try:
        run(args)
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values()]
        code = next((c for c in codes if c > 0), None)
        if code is None:  # killed by a signal: the party printed nothing
            print(f"mpcache: a party was killed (signal {-codes[0]})", file=sys.stderr, flush=True)
            return 3
        return code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(torchrun_main())
