"""Oblivious top-k (protocols/numerics/topk.py): every construction, two real parties, selects exactly the
plaintext set (one tie rule: equal scores, the lower index wins; forced items always in), k distinct
rows in ascending position order."""

import json

import pytest
import torch
from test_mpc_cli import mpcache
from test_mpc_two_party import run_parties

from mpcache.core.backend import PlainBackend
from mpcache.core.errors import UserError
from protocols.numerics.topk import METHODS, TopkConfig, choose

BOUND = 2.0**15 - 2.0**-16  # the bounded comparison's clamp (topk.BOUND_RING_BITS at 16 bits)


def test_plain_topk_ties_go_to_the_lower_index():
    b = PlainBackend()
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 1.0]])
    assert b.topk(scores, 2).tolist() == [[1, 2]]
    assert b.topk(scores, 4).tolist() == [[0, 1, 2, 4]]
    assert b.topk(torch.zeros(2, 5), 3).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_plain_topk_forced_items_count_inside_k():
    b = PlainBackend()
    scores = torch.tensor([[5.0, 1.0, 4.0, 3.0, 0.0], [0.0, 9.0, 8.0, 7.0, 6.0]])
    forced = torch.tensor([False, False, False, False, True])
    assert b.topk(scores, 2, forced).tolist() == [[0, 4], [1, 4]]
    rows = torch.tensor([[True, False, False, False, False], [False, False, False, True, True]])
    assert b.topk(scores, 2, rows).tolist() == [[0, 2], [3, 4]]
    with pytest.raises(UserError, match="do not fit"):
        b.topk(scores, 1, rows)
    with pytest.raises(UserError, match="k = 6"):
        b.topk(scores, 6)


def test_auto_rule_picks_allpairs_for_small_counts_and_bisection_for_many_tokens():
    cfg = TopkConfig()
    assert choose(1, 64, 13, cfg) == "allpairs"
    assert choose(1, 2048, 400, cfg) == "bisect"
    assert choose(1, 2048, 400, TopkConfig("network")) == "network"
    with pytest.raises(UserError, match="unknown top-k method"):
        TopkConfig("sorting")


@pytest.mark.parametrize("approx", ["v1", "fast"])  # CrypTen's comparison; the dealer's ring one
def test_every_construction_selects_the_plaintext_set_in_order_under_mpc(tmp_path, approx):
    r = run_parties(tmp_path, "--check-topk", ",".join(METHODS), "--approx", approx, timeout=600)
    plain = PlainBackend()
    for method in METHODS:
        for case, got in zip(r["cases"], r["onehots"][method], strict=True):
            scores, k = torch.tensor(case["scores"]), case["k"]
            forced = None if case["forced"] is None else torch.tensor(case["forced"])
            expected = plain.topk(scores, k, forced)
            onehot = torch.tensor(got)
            assert onehot.shape == (scores.shape[0], k, scores.shape[1]), method
            assert torch.allclose(onehot, onehot.round(), atol=1e-4), method  # exact 0/1 entries
            onehot = onehot.round()
            assert ((onehot == 0) | (onehot == 1)).all() and (onehot.sum(-1) == 1).all(), method
            picked = onehot.argmax(-1)
            assert torch.equal(picked, expected), f"{method}: {picked.tolist()} vs {expected.tolist()}"
    for case, got in zip(r["cases"], r["ring_allpairs"], strict=True):  # keys over the whole ring
        forced = None if case["forced"] is None else torch.tensor(case["forced"])
        expected = plain.topk(torch.tensor(case["scores"]), case["k"], forced)
        assert torch.equal(torch.tensor(got).round().argmax(-1), expected), "allpairs, ring keys"
    for case in r["maxima"]:  # the selections' maxima and argmin: exact, ties to the lower index
        check_maximum(case)


def check_maximum(case: dict) -> None:
    """Exact within the bounded comparison's range (every preset's maxima use it); past it the
    values are clamped to |x| < 2^15 first: ties at the clamp, still exactly one winner."""
    x = torch.tensor(case["x"], dtype=torch.float64).clamp(-BOUND, BOUND)
    assert torch.allclose(torch.tensor(case["amax"], dtype=torch.float64), x.amax(-1), atol=1e-4), x
    onehot = torch.tensor(case["argmin"]).round()  # [H, 1, n]
    assert ((onehot == 0) | (onehot == 1)).all() and (onehot.sum(-1) == 1).all(), onehot
    assert torch.equal(onehot[:, 0].argmax(-1), x.argmin(-1))


def test_bench_topk_measures_and_skips_what_would_blow_up(tmp_path):
    out = tmp_path / "topk.jsonl"
    proc = mpcache("bench", "topk", "--sizes", "4,32", "--k", "2", "--methods", "allpairs",
                   "--max-bytes", "5000", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran, skipped = [json.loads(line) for line in out.read_text().splitlines()]
    assert (ran["n"], ran["k"], ran["method"]) == (4, 2, "allpairs") and ran["correct"] is True
    assert ran["online_bytes"] > 0 and ran["rounds"] > 0 and ran["lan_s"] > ran["compute_s"]
    assert skipped["n"] == 32 and "estimated" in skipped["skipped"] and "online_bytes" not in skipped
    assert "allpairs" in proc.stdout and "skipped" in proc.stdout


def test_bench_topk_bad_method_is_one_line_exit_2(tmp_path):
    proc = mpcache("bench", "topk", "--methods", "sorting", "--json", str(tmp_path / "x.jsonl"), timeout=60)
    assert proc.returncode == 2 and "--methods" in proc.stderr


@pytest.mark.slow
def test_bounded_comparisons_with_a_ttp_dealer_select_the_plaintext_set(tmp_path):
    """A TTP dealer compares bounded differences in 4 digits of 8 bits (tables): same selections."""
    r = run_parties(tmp_path, "--check-topk", "allpairs", "--approx", "fast", "--dealer", "ttp", nproc=3,
                    timeout=600)
    plain = PlainBackend()
    for case, got in zip(r["cases"], r["onehots"]["allpairs"], strict=True):
        forced = None if case["forced"] is None else torch.tensor(case["forced"])
        expected = plain.topk(torch.tensor(case["scores"]), case["k"], forced)
        assert torch.equal(torch.tensor(got).round().argmax(-1), expected)
    for case in r["maxima"]:
        check_maximum(case)
