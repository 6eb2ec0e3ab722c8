"""The trade-off document is generated from records alone (one command), ratios against full in the
same file, needle chunks merged."""

from __future__ import annotations

import json

from mpcache.eval.mpc_tradeoff import main, needle_scores


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
