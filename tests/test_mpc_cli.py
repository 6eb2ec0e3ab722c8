"""`mpcache bench mpc` and `mpcache plot`: records with the documented fields; clear errors."""

import json
import subprocess
import sys

import pytest

FIELDS = ("online_bytes", "rounds", "compute_s", "dealer_bytes", "lan_s", "wan_s")


def mpcache(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mpcache", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_bench_mpc_writes_records_and_plot(tmp_path):
    out = tmp_path / "mpc.jsonl"
    proc = mpcache("bench", "mpc", "--model", "random:tiny", "--length", "8,16", "--new-tokens", "2",
                   "--mask-reuse", "both", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    settings = [(r["length"], r["mask_reuse"]) for r in records]
    assert settings == [(8, True), (16, True), (8, False), (16, False)]
    for r in records:
        for part in ("prefill", "decode_per_token"):
            assert all(k in r[part] for k in FIELDS)
        assert r["dealer"] == "tfp" and r["policy"] == "full" and r["plaintext_per_token_s"] > 0
        assert r["ratios"]["lan_vs_plaintext"] > 1
        assert r["decode_per_token"]["online_bytes"] > 0
        assert r["rng"] == "aes-ctr" and r["rng_elements_per_token"] > 0
        assert abs(sum(p["online_bytes"] for p in r["phases"].values())
                   - r["decode_per_token"]["online_bytes"]) < 1
    by = {(r["length"], r["mask_reuse"]): r["decode_per_token"]["online_bytes"] for r in records}
    assert by[(16, True)] < by[(16, False)]  # mask reuse opens only the fresh operands
    assert "progress" not in proc.stdout
    assert "rendezvous on 127.0.0.1:" in proc.stderr  # the chosen port is printed
    png = tmp_path / "mpc.png"
    proc = mpcache("plot", str(out), "--out", str(png))
    assert proc.returncode == 0 and png.stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["--model", "random:nope"], "random"),
    (["--model", "random:tiny", "--new-tokens", "1"], "--new-tokens"),
    (["--model", "random:tiny", "--length", "5000"], "positions"),
    (["--model", "random:tiny", "--policy", "nope"], "policy"),
    (["--model", "random:tiny", "--policy", "full,mikv"], "plaintext only"),
    (["--model", "random:tiny", "--approx", "v1,quick"], "approximation preset"),
    (["--model", "random:tiny", "--approx", "exact"], "--approx"),
])
def test_bench_mpc_bad_input_is_one_line_exit_2(tmp_path, args, message):
    proc = mpcache("bench", "mpc", *args, "--json", str(tmp_path / "x.jsonl"), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mpcache: error:") and message in proc.stderr


@pytest.mark.slow
def test_bench_mpc_plaintext_prefill_one_record_per_policy(tmp_path):
    """--prefill plaintext: one record per policy from the same prompt, with the one-time static
    stage and the keys attended; the record says it is not a private run."""
    out = tmp_path / "mpc.jsonl"
    proc = mpcache("bench", "mpc", "--model", "random:tiny", "--length", "192", "--new-tokens", "3",
                   "--prefill", "plaintext", "--policy", "full,mpcache:s1=16:s2=8:preset=paper",
                   "--json", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "NOT A PRIVATE RUN" in proc.stderr
    full, mpc = [json.loads(line) for line in out.read_text().splitlines()]
    assert (full["policy"], mpc["policy"]) == ("full", "mpcache:s1=16:s2=8:preset=paper")
    for r in (full, mpc):
        assert r["prefill_mode"] == "plaintext" and not r["private"] and "NOT A PRIVATE RUN" in r["note"]
        assert all(k in r["static"] for k in FIELDS)
    assert full["static"]["online_bytes"] == 0 and mpc["static"]["online_bytes"] > 0
    assert full["selected_tokens"] > 192 and mpc["selected_tokens"] < 0.2 * 192
    assert mpc["decode_per_token"]["online_bytes"] < full["decode_per_token"]["online_bytes"]
    assert "selection" in mpc["phases"]
