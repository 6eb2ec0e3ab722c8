"""The chat client's own pieces: /file reading, the prefill progress line, latency, the report."""

import io
import json
from types import SimpleNamespace

import pytest
from test_cli_errors import assert_clean_error, run_cli

from mpcache.programs.parties import chat_report
from mpcache.programs.parties.chat_ui import FILE_MAX_BYTES, Progress, latency, read_file


def test_file_messages_are_read_or_refused_with_the_reason(tmp_path):
    good = tmp_path / "doc.txt"
    good.write_text("  A document.\n")
    assert read_file(f" {good} ") == "A document."
    (tmp_path / "bin").write_bytes(b"caf\xe9")
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "big").write_bytes(b"x" * (FILE_MAX_BYTES + 1))
    for name, why in (("bin", r"not UTF-8 text \(byte 3\)"), ("empty", "is empty"), ("big", "over the"),
                      ("missing", "no file at")):
        with pytest.raises(ValueError, match=why):
            read_file(str(tmp_path / name))
    with pytest.raises(ValueError, match="needs a path"):
        read_file(" ")


def test_progress_counts_the_chunk_layers_and_traffic_and_stops_cleanly():
    comm = SimpleNamespace(comm_bytes=1e6)
    out = io.StringIO()
    progress = Progress(40, 4, comm, stream=out)
    comm.comm_bytes = 3.5e6
    progress.layer(1, 1)  # a decode step's layer: not the chunk
    progress.layer(2, 40)
    assert progress.line().startswith("[prefill 40 tokens: layer 2/4 (50%), 2.5 MB so far, ")
    progress.stop()
    progress.stop()  # idempotent (the first answer token and the turn's end both stop it)
    assert out.getvalue() == ""  # not a terminal and under LINE_EVERY_S: no line at all


def test_latency_names_first_token_and_per_token_time():
    result = SimpleNamespace(first_token_s=12.0, new_ids=[1, 2, 3])
    assert latency(result, 16.0) == "first token 12.0 s, then 2.00 s/token"
    assert latency(SimpleNamespace(first_token_s=3.0, new_ids=[7]), 3.0) == "first token 3.0 s"


def test_report_shows_stage_cache_latency_and_the_prefill_profile(tmp_path, capsys):
    cost = {"online_bytes": 2e6, "rounds": 10, "compute_s": 1.0, "dealer_bytes": 0.0, "dealer_rounds": 0,
            "lan_s": 1.0, "wan_s": 2.0}
    rec = {"turn": 1, "model": "random:tiny", "dealer": "tfp", "approx": "fast", "policy": "mpcache",
           "budget": 0.2, "stage_tokens": 256, "prompt_tokens": 20, "answer_tokens": 3, "seconds": 4.0,
           "first_token_s": 3.0, "per_token_s": 0.5, "staged": True, "cache_tokens": 22, "position": 22,
           "turn_cost": cost, "answer_ids": [72, 105, 257],
           "prefill_phases": {"softmax": dict(cost, online_bytes=1.5e6),
                              "silu": dict(cost, online_bytes=0.5e6)}}
    path = tmp_path / "turns.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    assert chat_report.main([str(path), "--answers"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 20 + 3 | yes | 22 of 22 | 2.0 | 10 | 0.0 | 4.0 | 3.0 | 0.50 | 2.0 | 1.00x |" in out
    assert "- turn 1 prefill, 0.1 MB per prompt token: softmax 2 MB (75%), silu 0 MB (25%)" in out
    assert "- turn 1: 'Hi'" in out


@pytest.mark.parametrize("args,line", [
    (["--policy", "mikv"], "policy 'mikv' runs in plaintext only"),
    (["--budget", "0"], "--budget must be in (0, 1], got 0.0"),
    (["--policy", "mpcache:rho=2"], "rho must be in (0, 1]"),
    (["--stage-tokens", "0"], "--stage-tokens must be at least 1"),
])
def test_chat_policy_options_are_refused_before_any_launch(args, line):
    proc = run_cli("chat", "server", "--model", "random:tiny", *args)
    assert proc.returncode == 2
    assert_clean_error(proc, line)
