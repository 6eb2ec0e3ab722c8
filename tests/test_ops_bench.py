"""`mpcache bench ops`: stock CrypTen vs our fast preset on recorded random:tiny activations."""

import json
import os
import subprocess
import sys

import pytest


def _run(tmp_path, *args):
    env = dict(os.environ, MPCACHE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "mpcache", "bench", "ops", "--model", "random:tiny", *args],
                          env=env, capture_output=True, text=True, timeout=600)


def test_unknown_impl_is_a_user_error(tmp_path):
    proc = _run(tmp_path, "--impl", "quick", "--json", str(tmp_path / "x.jsonl"))
    assert proc.returncode == 2 and "--impl" in proc.stderr


@pytest.mark.slow
def test_fast_ops_take_fewer_rounds_than_crypten_and_stay_accurate(tmp_path):
    out = tmp_path / "ops.jsonl"
    proc = _run(tmp_path, "--impl", "crypten,fast", "--ops", "softmax128,silu1536,rmsnorm576,compare1e5",
                "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = {(r["op"], r["impl"]): r for r in map(json.loads, out.read_text().splitlines())}
    for op in ("softmax128", "silu1536", "rmsnorm576", "compare1e5"):
        assert recs[op, "fast"]["rounds"] < recs[op, "crypten"]["rounds"], op
    assert recs["softmax128", "fast"]["max_error"] < 1e-3
    assert recs["silu1536", "fast"]["max_error"] < 2e-3
    assert recs["rmsnorm576", "fast"]["max_error"] < 1e-3
    assert recs["compare1e5", "fast"]["max_error"] < 2.0**-7  # only inputs within 2^-8 of zero
    assert "| softmax128 |" in proc.stdout
