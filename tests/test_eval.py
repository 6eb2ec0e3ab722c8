"""The accuracy harness: deterministic records, tasks, CLI errors, plots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mpcache.core.backend import PlainBackend
from mpcache.eval.sweep import SweepConfig, run_sweep
from mpcache.eval.tasks import build_sample, is_correct
from mpcache.models import Transformer, load_model

VOLATILE = {"seconds", "prefill_seconds", "time"}


@pytest.fixture(scope="module")
def tiny_model():
    loaded = load_model("random:tiny")
    return loaded, Transformer(loaded.config, loaded.weights, PlainBackend())


@pytest.mark.parametrize("task", ["needle", "lines", "ppl"])
def test_same_seed_gives_identical_records(tiny_model, task):
    loaded, model = tiny_model
    cfg = SweepConfig(task, ["full", "h2o", "mpcache"], [0.2], [300], samples=2, seed=3, model="random:tiny",
                      max_new_tokens=4, ppl_tokens=4, details=True)
    first, second = (run_sweep(cfg, model, loaded.tokenizer) for _ in range(2))
    strip = [[{k: v for k, v in r.items() if k not in VOLATILE} for r in recs] for recs in (first, second)]
    assert strip[0] == strip[1]
    assert [r["policy"] for r in first] == ["full", "h2o", "mpcache"]
    for rec in first:
        assert rec["samples"] == 2 and len(rec["details"]) == 2
        assert ("perplexity" if task == "ppl" else "accuracy") in rec
        assert rec["mean_attended_tokens"] > 0 and rec["kv_bytes"] > 0
    full, h2o = first[0], first[1]
    assert h2o["mean_attended_tokens"] < 0.25 * full["mean_attended_tokens"]
    assert h2o["kv_bytes"] < full["kv_bytes"]
    other = run_sweep(SweepConfig(**{**cfg.__dict__, "seed": 4}), model, loaded.tokenizer)
    assert [r["details"] for r in other] != [r["details"] for r in first]


@pytest.mark.slow
def test_needle_sample_hides_the_value_and_fits_the_length(smollm2):
    tok = smollm2.tokenizer
    sample = build_sample("needle", tok, 1000, seed=0, index=5)
    text = tok.decode(sample.prompt_ids)
    assert f"The special magic number is {sample.answer}." in text
    assert abs(len(sample.prompt_ids) - 1000) <= 8
    assert is_correct(sample, f"The special magic number mentioned is {sample.answer}.")
    assert not is_correct(sample, "The special magic number is 11.")


def test_lines_sample_asks_for_one_of_its_lines(tiny_model):
    loaded, _ = tiny_model
    sample = build_sample("lines", loaded.tokenizer, 800, seed=1, index=0)
    text = loaded.tokenizer.decode(sample.prompt_ids)
    name = text.rsplit("in line ", 1)[1].split("?")[0]
    assert f"line {name}: REGISTER_CONTENT is <{sample.answer}>" in text
    assert abs(len(sample.prompt_ids) - 800) < 60


def run_cli(*args):
    cmd = [sys.executable, "-m", "mpcache", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--budget", "0"], "--budget values must be in (0, 1]"),
        (["--budget", "x"], "--budget must be a comma list"),
        (["--length", "5"], "at least 16 tokens"),
        (["--samples", "0"], "--samples must be at least 1"),
        (["--policy", "mpcache:rho=2"], "rho must be in (0, 1]"),
        (["--length", "9000"], "exceeds the model's"),
    ],
)
def test_eval_bad_input_is_one_clean_line(tmp_path, args, needle):
    proc = run_cli("eval", "needle", "--model", "random:tiny", "--json", str(tmp_path / "r.jsonl"), *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_eval_and_plot_cli(tmp_path):
    out = tmp_path / "r.jsonl"
    proc = run_cli("eval", "lines", "--model", "random:tiny", "--policy", "full,streaming,quest",
                   "--budget", "0.1,0.3", "--length", "200", "--samples", "1", "--max-new-tokens", "3",
                   "--json", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["policy"], r["budget"]) for r in records] == [
        ("full", 1.0), ("streaming", 0.1), ("streaming", 0.3), ("quest", 0.1), ("quest", 0.3)]
    png = tmp_path / "plot.png"
    proc = run_cli("plot", str(out), "--out", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    proc = run_cli("plot", str(bad), "--out", str(png))
    assert proc.returncode == 2 and "not a JSON line" in proc.stderr


def test_chunks_of_a_sweep_merge_by_sample_count():
    from mpcache.eval.plot import merge_chunks, table

    base = {"task": "needle", "policy": "h2o", "budget": 0.1, "length": 2000, "seed": 0, "model": "m",
            "max_new_tokens": 24, "mean_new_tokens": 20.0, "mean_attended_tokens": 200.0,
            "mean_prompt_tokens": 2000.0, "kv_bytes": 100, "seconds": 1.0}
    chunks = [{**base, "first_sample": 0, "samples": 10, "accuracy": 0.5, "details": [{"i": 0}]},
              {**base, "first_sample": 10, "samples": 30, "accuracy": 0.1, "details": [{"i": 1}]},
              {**base, "policy": "full", "budget": 1.0, "first_sample": 0, "samples": 10, "accuracy": 1.0}]
    merged = merge_chunks(chunks)
    assert len(merged) == 2
    assert merged[0]["samples"] == 40 and merged[0]["accuracy"] == pytest.approx(0.2)
    assert merged[0]["seconds"] == 2.0 and merged[0]["details"] == [{"i": 0}, {"i": 1}]
    rerun = merge_chunks([chunks[0], {**chunks[0], "accuracy": 0.7}])  # same chunk twice: latest wins
    assert rerun[0]["accuracy"] == 0.7 and rerun[0]["samples"] == 10
    assert "| h2o | 0.2 / 200 |  |" in table(merged)
    full_only = table(merge_chunks([chunks[2]])).splitlines()  # no budget below 1: header and rule agree
    assert full_only[1:4] == ["| policy | 100 % |", "|---|---|", "| full | 1 / 200 |"]


def test_summary_table_merges_files_and_marks_copied_cells(tmp_path):
    import json

    base = {"task": "needle", "length": 2000, "seed": 0, "model": "m", "max_new_tokens": 24,
            "mean_attended_tokens": 200.0, "kv_bytes": 9_000_000}
    measured = [
        {**base, "policy": "locret", "budget": 0.1, "first_sample": 0, "samples": 5, "accuracy": 0.2,
         "extra_params": 3_700_000, "train_seconds": 624.0},
        {**base, "policy": "locret", "budget": 0.1, "first_sample": 5, "samples": 5, "accuracy": 0.0,
         "extra_params": 3_700_000, "train_seconds": 624.0},
        {**base, "policy": "cand:x=1", "budget": 0.1, "first_sample": 0, "samples": 10, "accuracy": 0.9,
         "time": "2026-01-01T00:00:00Z"},
        {**base, "policy": "cand", "budget": 0.1, "first_sample": 0, "samples": 1, "accuracy": 1.0,
         "kv_bytes": 5_000_000, "time": "2026-02-01T00:00:00Z"},  # newer code, one sample
        {**base, "task": "ppl", "policy": "full", "budget": 1.0, "first_sample": 0, "samples": 10,
         "perplexity": 22.28, "kv_bytes": 93_000_000},
    ]
    copied = {"task": "needle", "length": 2000, "seed": 0, "model": "m", "source": "README table"}
    sourced = [{**copied, "policy": "full", "budget": 1.0, "samples": 30, "accuracy": 0.967},
               {**copied, "policy": "cand", "budget": 0.1, "samples": 10, "accuracy": 0.5}]
    files = []
    for name, recs in (("a.jsonl", measured), ("b.jsonl", sourced)):
        files.append(tmp_path / name)
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in recs))
    proc = run_cli("table", *map(str, files), "--alias", "cand:x=1=>cand", "--rows", "full,cand,locret,nope",
                   "--needle-lengths", "2000", "--budgets", "0.05,0.1")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in proc.stdout.splitlines()
            if line.startswith("| ")}
    # columns: needle 5 %, 10 %, ppl 5 %, 10 %, kv_bytes, extra params, training
    assert rows["policy"][:2] == ["needle L=2000 5 %", "needle L=2000 10 %"]
    # budget-less full fills every budget column; its copied cells carry the footnote
    assert rows["full"][:4] == ["0.967 (29/30) [^1]", "0.967 (29/30) [^1]", "22.3 (10)", "22.3 (10)"]
    assert rows["full"][4:] == ["93.0 MB (ppl, 10)", "0", "none |"]
    # same samples: the measured record (through its alias) beats the copied one;
    # accuracy from the most samples, kv_bytes from the newest record
    assert rows["cand"][:2] == ["–", "0.900 (9/10)"] and rows["cand"][4] == "5.0 MB (needle, 1)"
    # two chunks merge into 10 samples; trained policies show their parameters and training time
    assert rows["locret"] == ["–", "0.100 (1/10)", "–", "–", "9.0 MB (needle, 10)", "3.70 M", "624 s |"]
    assert rows["nope"] == ["–"] * 6 + ["– |"]
    assert "[^1]: README table" in proc.stdout
    assert run_cli("table", str(files[0]), "--alias", "no-arrow").returncode == 2
