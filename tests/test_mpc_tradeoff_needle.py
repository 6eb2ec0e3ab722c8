"""The default against the needle bar: its cells, and verdicts against the other policies' records."""

from __future__ import annotations

from mpcache.eval.mpc_tradeoff import needle_scores
from mpcache.eval.mpc_tradeoff_needle import DEFAULT, bar_table


def _rec(policy: str, budget: float, length: int, accuracy: float, approx: str | None = None,
         first: int = 0, samples: int = 30) -> dict:
    r = {"task": "needle", "table": "needle", "policy": policy, "budget": budget, "length": length,
         "samples": samples, "seed": 0, "first_sample": first, "accuracy": accuracy}
    return r if approx is None else {**r, "approx": approx}


def _cells(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(start))
    return [c.strip() for c in line.split("|")[1:-1]]


def test_bar_rows_and_verdicts():
    files = {
        "plaintext_accuracy": [_rec("full", 1.0, 2000, 0.967), _rec("quest", 0.1, 2000, 0.133),
                               _rec("quest", 0.05, 2000, 0.0), _rec("mpcache", 0.1, 2000, 0.967)],
        "mpc_tradeoff_needle": [_rec(DEFAULT, 0.1, 2000, 1.0, "fast", 0, 5),
                                _rec(DEFAULT, 0.1, 2000, 0.8, "fast", 5, 5),
                                _rec(DEFAULT, 0.1, 4000, 0.9, "fast", 0, 10)],
    }
    text = "\n".join(bar_table(files, needle_scores(files)))
    assert f"| `{DEFAULT}` | fast | - | 0.900 (10) | - | - | 0.900 (10) | - |" in text
    assert "| `full` | exact | 0.967 (30) | 0.967 (30) | 0.967 (30) | - | - | - |" in text
    # 0.900 < 0.93 at L = 2000, 10 %; 0.900 >= 0.85 at L = 4000, 10 %; 5 % not measured
    others = _cells(text, "| the bar, against the other")
    assert others[2:] == ["not measured", "NOT met (best: `quest` 0.133)", "not measured", "no bar", "met",
                          "no bar"]
    assert _cells(text, "| ... against the earlier")[3] == "NOT met (best: `mpcache` 0.967)"
