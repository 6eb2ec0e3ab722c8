"""``mpcache-torchrun`` (``python -m protocols.net.launch``): a failed party ends the launch with its
own one-line message and exit status, not torchrun's ChildFailedError traceback."""

import os
import subprocess
import sys
from pathlib import Path

from protocols.net.launch import torchrun_command

PARTY = str(Path(__file__).with_name("mpc_party.py"))


def test_failed_party_is_one_line_and_its_exit_status(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("OMP_NUM_THREADS", None)  # torchrun would warn about it
    cmd = torchrun_command([PARTY, "--out", str(tmp_path / "x.json"), "--model", "random:nope"], 2)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mpcache: error: unknown random preset"), proc.stderr
    assert cmd[1:3] == ["-m", "protocols.net.launch"] and sys.executable == cmd[0]
