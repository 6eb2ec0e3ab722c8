"""Start the parties on this machine with ``torch.distributed.run`` (torchrun), on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(script_args: list[str], nproc: int, port: int | None = None) -> list[str]:
    """``python -m torch.distributed.run`` for ``nproc`` local parties running ``script_args``."""
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={port or free_port()}",
        *script_args,
    ]


def launch_self(dealer: str) -> int:
    """Re-run this script (``sys.argv``) as the local parties of a session with ``dealer``."""
    from protocols.runtime import world_size

    return launch_local([str(Path(sys.argv[0]).resolve()), *sys.argv[1:]], world_size(dealer))


def launch_local(script_args: list[str], nproc: int, timeout_s: float | None = None) -> int:
    """Run the parties in the foreground (their output goes to ours); returns the exit status."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONWARNINGS"] = "ignore"
    try:
        return subprocess.run(torchrun_command(script_args, nproc), env=env, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        print(f"mpcache: the parties did not finish within {timeout_s:.0f} s", file=sys.stderr)
        return 3
