"""The trade-off document is generated from records alone (one command), ratios against full in the
same file, needle chunks merged."""

from __future__ import annotations

import json

from mpcache.eval.mpc_tradeoff import main, needle_scores, static_table


def _bench(policy: str, mb: float, rounds: int) -> dict:
    phase = {"online_bytes": mb * 1e6, "rounds": rounds, "compute_s": 1.0, "lan_s": 1.0 + mb * 8e-3}
    return {"kind": "mpc", "policy": policy, "length": 2048, "budget": 0.1, "phases": {"softmax": phase}}


def _needle(first: int, accuracy: float) -> dict:
    return {"task": "needle", "policy": "mpcache:preset=lean", "budget": 0.1, "length": 2000, "samples": 5,
            "seed": 0, "first_sample": first, "accuracy": accuracy, "approx": "fast"}


def test_document_from_records(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    runs = (_bench("full", 300.0, 3600), _bench("mpcache:preset=lean", 75.0, 3900))
    (records / "mpc_tradeoff_2048.jsonl").write_text("\n".join(json.dumps(r) for r in runs))
    (records / "mpc_tradeoff_needle.jsonl").write_text(
        "\n".join(json.dumps(r) for r in (_needle(0, 1.0), _needle(5, 0.8))))
    out = tmp_path / "doc.md"
    assert main(["--records", str(records), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| mpc_tradeoff_2048 | 2048 | `mpcache:preset=lean` | 0.250 met | 1.083 met |" in text
    assert "0.900 (10)" in text


def test_needle_chunks_merge_by_seed():
    files = {"x": [_needle(0, 1.0), _needle(5, 0.8), _needle(5, 0.8)]}
    (record,) = needle_scores(files).values()
    assert record["samples"] == 10 and abs(record["accuracy"] - 0.9) < 1e-9


def test_static_curve_rows_are_rules_and_columns_kept_fractions():
    def rec(policy: str, accuracy: float, kv: float) -> dict:
        return {"task": "needle", "policy": policy, "budget": 0.1, "length": 2000, "samples": 10, "seed": 0,
                "first_sample": 0, "accuracy": accuracy, "approx": "fast", "kv_bytes": kv * 1e6}

    files = {"x": [rec("mpcache:static=true:static_unit=32:rho=0.3", 0.5, 30.0),
                   rec("mpcache:static=true:static_unit=32:rho=0.5", 0.8, 50.0),
                   rec("mpcache", 1.0, 100.0)]}
    lines = static_table(needle_scores(files))
    assert lines[0] == "| static rule | keep 30% | keep 50% | keep 100% |"
    assert lines[2] == ("| `mpcache:static=true:static_unit=32` | 0.500 (10), 30.0 MB | 0.800 (10), 50.0 MB "
                        "| 1.000 (10), 100.0 MB |")


def test_each_policy_against_the_full_record_of_its_own_run(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    runs = [{**_bench("full", 300.0, 3600), "time": "2026-01-01T09:00"},
            {**_bench("mpcache:preset=lean", 75.0, 3900), "time": "2026-01-01T09:05"},
            {**_bench("full", 200.0, 3600), "time": "2026-12-06T13:00"},
            {**_bench("mpcache", 100.0, 3600), "time": "2026-12-06T13:05"}]
    (records / "mpc_tradeoff_2048.jsonl").write_text("\n".join(json.dumps(r) for r in runs))
    out = tmp_path / "doc.md"
    assert main(["--records", str(records), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| mpc_tradeoff_2048 | 2048 | `mpcache:preset=lean` | 75.0 | 3,900 | 1.60 | 1.00 | 0.250 |" in text
    assert "| mpc_tradeoff_2048 | 2048 | `mpcache` (`half`) | 100.0 | 3,600 | 1.80 | 1.00 | 0.500 |" in text
