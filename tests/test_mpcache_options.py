"""MPCache's accuracy options (issue 15): each does what it says, on hand-made keys and queries."""

from __future__ import annotations

import math

import pytest
import torch

from mpcache.core.backend import PlainBackend
from mpcache.core.cache import LayerCache
from mpcache.core.policy import PromptInfo
from mpcache.policies import make_policy
from mpcache.policies.mpcache_scoring import cluster_scores, relu, summaries, token_max_scores
from mpcache.policies.static import choose, neighbourhood_max

BACKEND = PlainBackend()


def _static_cache(static_heads: str, window_free: bool = False):
    """T=40, window 8, 2 KV heads x 2 query heads. Token 3 (a) is attended by both heads of KV head 0,
    token 7 (j) by one head of KV head 1 only (its other head attends evenly); one non-window token
    is kept."""
    t, d = 40, 8
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(2, t, d, generator=gen) * 0.01
    k[:, 3, 0] = 10.0  # a
    k[:, 7, 1] = 10.0  # j
    q = torch.zeros(4, t, d)
    q[0, :, 0] = q[1, :, 0] = 10.0  # heads 0, 1 (KV 0) look at a; head 3 (KV 1) at nothing
    q[2, :, 1] = 10.0  # head 2 (KV 1) looks at j
    policy = make_policy("mpcache", 0.1, rho=9 / 40, static=True, dynamic=False, share=False,
                         static_heads=static_heads, window_free=window_free)
    cache = LayerCache()
    cache.append(k, k.clone(), BACKEND)
    policy.after_prefill(0, PromptInfo(q, None, num_layers=1), cache, BACKEND)
    return k, cache


def _rows(full: torch.Tensor, kept: torch.Tensor) -> list[int]:
    return [int((full == row).all(-1).nonzero()[0]) for row in kept]


def test_per_kv_head_static_keeps_a_token_one_head_attends():
    k, mean = _static_cache("mean")
    assert [_rows(k[h], mean.k[h, :1]) for h in range(2)] == [[3], [3]]  # head mean: a everywhere
    k, per_head = _static_cache("kv")
    assert [_rows(k[h], per_head.k[h, :1]) for h in range(2)] == [[3], [7]]  # KV head 1 keeps j
    for cache in (mean, per_head):  # the window (last 8 tokens) is kept as is
        assert cache.length == 9 and torch.equal(cache.k[:, 1:], k[:, 32:])


def test_window_free_keeps_rho_tokens_besides_the_window():
    k, cache = _static_cache("kv", window_free=True)
    assert cache.length == 9 + 8  # ceil(rho*T) top tokens + the window
    assert {3, 7} <= set(_rows(k[1], cache.k[1, :9])) and torch.equal(cache.k[:, 9:], k[:, 32:])


def test_static_unit_keeps_whole_runs_by_their_best_token():
    """static_unit=4 at T=42 (window ceil(0.2*42) = 9, keep 14): the scored prefix is the first 32
    tokens (8 runs of 4; the 33rd joins the window), and one run fits besides the 10 kept last tokens.
    Per KV head, the run holding the token its heads attend to is kept whole."""
    t, d = 42, 8
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(2, t, d, generator=gen) * 0.01
    k[:, 5, 0] = 10.0  # run 1 (tokens 4-7)
    k[:, 18, 1] = 10.0  # run 4 (tokens 16-19)
    q = torch.zeros(4, t, d)
    q[0, :, 0] = q[1, :, 0] = 10.0  # KV head 0 looks at token 5
    q[2, :, 1] = q[3, :, 1] = 10.0  # KV head 1 at token 18
    policy = make_policy("mpcache", 0.1, rho=14 / 42, static=True, dynamic=False, share=False,
                         static_heads="kv", static_unit=4)
    cache = LayerCache()
    cache.append(k, k.clone(), BACKEND)
    policy.after_prefill(0, PromptInfo(q, None, num_layers=1), cache, BACKEND)
    assert cache.length == 14
    assert torch.equal(cache.k[0, :4], k[0, 4:8]) and torch.equal(cache.k[1, :4], k[1, 16:20])
    assert torch.equal(cache.k[:, 4:], k[:, 32:]) and torch.equal(cache.v[:, 4:], k[:, 32:])


def test_static_spread_keeps_the_neighbours_of_the_best_run():
    """static_spread=1: a run scores the best of itself and its two neighbours, so the runs beside
    the attended one tie with it and are kept with it (lower index first on ties)."""
    scores = torch.tensor([[0.0, 0.1, 0.0, 0.0, 0.9, 0.0, 0.0, 0.2]])
    expect = torch.tensor([[0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.2, 0.2]])
    assert torch.equal(neighbourhood_max(scores, 1, BACKEND), expect)
    choice = choose(scores.repeat_interleave(4, 1), 12, BACKEND, unit=4, spread=1)
    assert choice.selection.tolist() == [[3, 4, 5]] and choice.cut == 32


def test_signed_score_ranks_an_outlier_cluster_first():
    # q is negative in channel 0. Cluster 0: every token gives q.k = 0.5. Cluster 1: q.k = -0.4
    # for all tokens but one outlier with q.k = 1 (the true best token).
    q = torch.tensor([[[-1.0, 0.0]]])
    keys = torch.zeros(1, 32, 2)
    keys[0, :16, 0] = -0.5
    keys[0, 16:, 0] = 0.4
    keys[0, 20, 0] = -1.0
    kmax, kmin = keys.reshape(1, 2, 16, 2).amax(2), keys.reshape(1, 2, 16, 2).amin(2)
    linear = cluster_scores(q, *summaries(kmax, kmin, 0.6, "linear"), 0.6, "sum", BACKEND)
    signed = cluster_scores(q, *summaries(kmax, kmin, 0.8, "signed"), 0.8, "sum", BACKEND)
    assert linear.argmax().item() == 0 and signed.argmax().item() == 1
    assert token_max_scores(q, keys, 16, "sum", BACKEND).argmax().item() == 1


def test_signed_score_is_quests_bound_at_alpha_1_and_the_midpoint_at_one_half():
    gen = torch.Generator().manual_seed(3)
    kmax, kmin = torch.randn(2, 2, 5, 8, generator=gen).sort(0).values.flip(0)
    q = torch.randn(2, 3, 8, generator=gen)  # 2 KV heads x 3 query heads
    bound = torch.maximum(q[:, :, None] * kmax[:, None], q[:, :, None] * kmin[:, None]).sum(-1)  # [2,3,5]
    got = cluster_scores(q, *summaries(kmax, kmin, 1.0, "signed"), 1.0, "sum", BACKEND)
    assert torch.allclose(got, bound.sum(1), atol=1e-5)
    got = cluster_scores(q, *summaries(kmax, kmin, 1.0, "signed"), 1.0, "max", BACKEND)
    assert torch.allclose(got, bound.amax(1), atol=1e-5)
    mid = cluster_scores(q, *summaries(kmax, kmin, 0.5, "signed"), 0.5, "sum", BACKEND)
    lin = cluster_scores(q, *summaries(kmax, kmin, 0.5, "linear"), 0.5, "sum", BACKEND)
    assert torch.allclose(mid, lin, atol=1e-5)
    assert torch.equal(relu(q, BACKEND), q.clamp(min=0))


def _decode_once(length: int, budget: float, **options):
    gen = torch.Generator().manual_seed(length)
    k, v = torch.randn(2, 3, length, 8, generator=gen)
    q = torch.randn(9, 1, 8, generator=gen)
    options.setdefault("preset", "paper")  # options not given are the original design's
    policy = make_policy("mpcache", budget, static=False, share=False, **options)
    cache = LayerCache()
    cache.append(k, v, BACKEND)
    policy.after_prefill(0, PromptInfo(None, None, num_layers=1), cache, BACKEND)
    keys, _ = policy.decode_kv(0, q, cache, BACKEND)
    return k, q, keys


@pytest.mark.parametrize("options", [{}, {"score": "signed", "alpha": 1.0}, {"score2": "max"},
                                     {"score2": "max", "hierarchy": False, "group": "max"},
                                     {"preset": "retrieval"}])
def test_forced_clusters_are_inside_the_budget(options):
    length, budget = 413, 0.2  # n = 83 >= s1 + 2*s2: room for the forced clusters and the tail
    k, _, keys = _decode_once(length, budget, **options)
    assert keys.shape[1] <= math.ceil(budget * length)
    full, s2 = length // 32 * 32, make_policy("mpcache", budget, **{"preset": "paper", **options}).s2
    for h in range(3):  # sink cluster, last full cluster and the tail are among the attended keys
        rows = _rows(k[h], keys[h])
        assert set(range(s2)) | set(range(full - s2, length)) <= set(rows)


def test_level2_token_max_picks_the_clusters_with_the_best_single_key():
    length = 256
    k, q, keys = _decode_once(length, 0.25, score2="max", hierarchy=False, force_ends=False)
    g = 3
    for h in range(3):
        logits = q[h * g : (h + 1) * g, 0] @ k[h].T  # [g, n]
        best = logits.reshape(g, length // 16, 16).amax(-1).sum(0)
        chosen = sorted(torch.topk(best, 4).indices.tolist())
        assert _rows(k[h], keys[h]) == [16 * c + i for c in chosen for i in range(16)]


def test_unknown_option_values_are_user_errors():
    from mpcache.core.errors import UserError

    for key, value in (("static_heads", "all"), ("score", "cosine"), ("group", "mean"), ("score2", "x"),
                       ("preset", "fast"), ("recent", 1.0), ("recent", -0.1)):
        with pytest.raises(UserError, match=key):
            make_policy("mpcache", 0.1, **{key: value})


def test_maxnorm_lets_each_query_head_rank_its_own_best_cluster_first():
    from mpcache.policies.mpcache_scoring import combine

    s = torch.tensor([[[1.0, 5.0, 2.0], [10.0, 11.0, 30.0]]])  # head 0 prefers cluster 1, head 1 cluster 2
    assert combine(s, "sum", BACKEND).tolist() == [[11.0, 16.0, 32.0]]  # head 1's scale dominates
    assert combine(s, "max", BACKEND).tolist() == [[10.0, 11.0, 30.0]]
    assert combine(s, "maxnorm", BACKEND).tolist() == [[-4.0, 0.0, 0.0]]  # both favourites on top
    # meannorm: minus each head's mean (8/3 and 17): head 0's favourite is 2.33 above its mean
    torch.testing.assert_close(combine(s, "meannorm", BACKEND), torch.tensor([[-5 / 3, 7 / 3, 13.0]]))


def test_qsum_scores_clusters_by_the_best_key_for_the_summed_query():
    length = 256
    k, q, keys = _decode_once(length, 0.25, score2="max", hierarchy=False, force_ends=False, group="qsum")
    for h in range(3):
        logits = q[h * 3 : (h + 1) * 3, 0].sum(0) @ k[h].T  # [n]: one query per KV head
        chosen = sorted(torch.topk(logits.reshape(length // 16, 16).amax(-1), 4).indices.tolist())
        assert _rows(k[h], keys[h]) == [16 * c + i for c in chosen for i in range(16)]


@pytest.mark.parametrize("force_last", [True, False])
def test_force_last_false_forces_only_the_sink_cluster(force_last):
    length, g = 256, 3
    gen = torch.Generator().manual_seed(7)
    k, v = torch.randn(2, 3, length, 8, generator=gen)
    q = torch.randn(9, 1, 8, generator=gen)
    for h in range(3):  # the last full level-2 cluster scores far below every other one
        noise = 0.1 * torch.rand(16, 8, generator=gen)
        k[h, length - 16 :] = -10.0 * q[h * g : (h + 1) * g, 0].sum(0) - noise
    policy = make_policy("mpcache", 0.25, static=False, share=False, hierarchy=False, score2="max",
                         group="sum", force_last=force_last, s2=16)
    cache = LayerCache()
    cache.append(k, v, BACKEND)
    policy.after_prefill(0, PromptInfo(None, None, num_layers=1), cache, BACKEND)
    keys, _ = policy.decode_kv(0, q, cache, BACKEND)
    for h in range(3):
        rows = set(_rows(k[h], keys[h]))
        assert set(range(16)) <= rows  # the sink cluster is always kept
        assert (set(range(length - 16, length)) <= rows) == force_last


# The options under 2PC (random:tiny, plaintext prefill): same tokens and cache lengths as the
# plaintext simulation of the MPC numerics, selection traffic where expected (~90 s).
MPC_SPECS = [
    "mpcache:s1=16:s2=8:preset=paper:static_heads=kv:window_free=true:score=signed:alpha=1:group=maxnorm:recent=0.5@0.2",
    "mpcache:preset=retrieval@0.1",  # s2=4; its s1=16:s2=8 form is in test_mpc_policies
    "mpcache:s1=16:s2=8:preset=paper:share_skip=0:score2=max:group=max:force_last=false@0.1",
    "mpcache:s1=16:s2=8:static=true:static_heads=kv:static_unit=16:static_spread=1:rho=0.5@0.1",  # runs
]
# The cheaper group variants of the default (issue 12), with the fast preset's numerics.
MPC_GROUPS = ["mpcache:s1=16:s2=8:group=meannorm@0.1", "mpcache:s1=16:s2=8:group=qsum@0.1",
              "mpcache:s1=16:s2=8:group=max@0.1"]


@pytest.mark.slow
def test_options_under_mpc_match_plaintext(tmp_path):
    from tests.test_mpc_policies import check_runs
    from tests.test_mpc_two_party import run_parties

    record = run_parties(tmp_path, "--policy", ",".join(MPC_SPECS), "--prompt-len", "256",
                         "--prefill", "plaintext", "--new-tokens", "3", "--timeout", "300", timeout=1500)
    assert [r["policy"] for r in record["runs"]] == MPC_SPECS
    check_runs(record, 256, 3)


@pytest.mark.slow
def test_group_variants_under_mpc_match_plaintext(tmp_path):
    from tests.test_mpc_policies import check_runs
    from tests.test_mpc_two_party import run_parties

    record = run_parties(tmp_path, "--policy", ",".join(MPC_GROUPS), "--prompt-len", "256",
                         "--approx", "fast", "--prefill", "plaintext", "--new-tokens", "3",
                         "--timeout", "300",
                         timeout=1500)
    assert [r["policy"] for r in record["runs"]] == MPC_GROUPS
    check_runs(record, 256, 3, approx="fast")


def test_presets_set_the_option_group_and_explicit_options_win():
    from mpcache.policies import parse_spec
    from mpcache.policies.mpcache import PRESETS, MPCachePolicy

    def group(p):
        return p.static, p.hierarchy, p.share, p.score2, p.group

    default = PRESETS[MPCachePolicy.preset]
    assert group(parse_spec("mpcache", 0.1)) == tuple(default[k] for k in ("static", "hierarchy", "share",
                                                                            "score2", "group"))
    assert group(parse_spec("mpcache:preset=retrieval", 0.1)) == (False, False, False, "max", "maxnorm")
    assert parse_spec("mpcache:preset=retrieval", 0.1).s2 == 4
    assert parse_spec("mpcache:preset=paper", 0.1).s2 == 16
    assert parse_spec("mpcache:preset=lean", 0.1).s2 == parse_spec("mpcache", 0.1).s2 == 8
    assert parse_spec("mpcache:s2=8", 0.1).s2 == 8
    assert group(parse_spec("mpcache:preset=paper", 0.1)) == (True, True, True, "summary", "sum")
    explicit = parse_spec("mpcache:preset=paper:share=off:score2=max", 0.1)
    assert group(explicit) == (True, True, False, "max", "sum")
    explicit = parse_spec("mpcache:preset=retrieval:static=true:group=sum", 0.1)
    assert group(explicit) == (True, False, False, "max", "sum")


def test_token_max_without_hierarchy_builds_no_summaries():
    # The default reads the keys themselves: no cluster min/max to compute (secret comparisons
    # under MPC) or to store.
    length = 256
    gen = torch.Generator().manual_seed(1)
    k, v = torch.randn(2, 3, length, 8, generator=gen)
    for preset, stored in (("retrieval", False), ("paper", True)):
        policy = make_policy("mpcache", 0.25, preset=preset, static=False, share=False)
        cache = LayerCache()
        cache.append(k, v, BACKEND)
        policy.after_prefill(0, PromptInfo(None, None, num_layers=1), cache, BACKEND)
        keys, _ = policy.decode_kv(0, torch.randn(9, 1, 8, generator=gen), cache, BACKEND)
        assert ("summaries" in cache.state) == stored and (policy.extra_nbytes(cache) > 0) == stored
        assert keys.shape[1] <= math.ceil(0.25 * length)


@pytest.mark.parametrize("preset", ["retrieval", "paper"])
@pytest.mark.parametrize("recent", [0.0, 0.5])
def test_recent_window_is_always_attended_inside_the_budget(preset, recent):
    # The newest 80 tokens score far below every other key: only the recent option keeps them
    # (besides the tail and, with force_last, the last full cluster).
    length, budget, g = 512, 0.25, 3
    gen = torch.Generator().manual_seed(11)
    k, v = torch.randn(2, 3, length, 8, generator=gen)
    q = torch.randn(9, 1, 8, generator=gen)
    for h in range(3):
        noise = 0.1 * torch.rand(80, 8, generator=gen)
        k[h, length - 80 :] = -10.0 * q[h * g : (h + 1) * g, 0].sum(0) - noise
    policy = make_policy("mpcache", budget, preset=preset, static=False, share=False, recent=recent)
    cache = LayerCache()
    cache.append(k, v, BACKEND)
    policy.after_prefill(0, PromptInfo(None, None, num_layers=1), cache, BACKEND)
    keys, values = policy.decode_kv(0, q, cache, BACKEND)
    n_budget = math.ceil(budget * length)
    assert keys.shape[1] <= n_budget and keys.shape[1] > n_budget - 32 - 16  # budget used, not exceeded
    window = math.floor(recent * n_budget)  # 64 of the 128 attended
    for h in range(3):
        rows = _rows(k[h], keys[h])
        assert set(range(policy.s2)) <= set(rows)  # the sink cluster stays forced
        assert set(range(length - window, length)) <= set(rows)
        if not recent:  # without the window the low-scoring newest tokens are not all kept
            assert not set(range(length - 64, length)) <= set(rows)
        assert torch.equal(values[h], v[h, rows])


@pytest.mark.parametrize("ends", [(True, True), (True, False), (False, False)])
def test_top_by_parents_is_the_one_shot_top_k(ends):
    # The default finds its top k2 clusters of 4 through parents of 16: the same set as one top-k
    # (exactly without ties; with ties, the same multiset of scores).
    from mpcache.policies.clusters import top

    gen = torch.Generator().manual_seed(5)
    policy = make_policy("mpcache", 0.1, s2=4, parents=16, force_ends=ends[0], force_last=ends[1])
    two_stage = 0
    for count in (32, 128, 512):
        for k2 in (2, 5, count // 10, count // 4 - 1, count // 4, count // 2):
            for scores in (torch.randn(3, count, generator=gen),
                           torch.randint(0, 4, (3, count), generator=gen).float()):  # many ties
                ref = top(BACKEND, scores, k2, policy._forced(count, 3))
                inner, outer = policy._top_by_parents(scores, k2, BACKEND)
                got = inner if outer is None else BACKEND.compose(outer.selection, inner, 16 // 4)
                assert got.shape == ref.shape and bool((got[:, 1:] > got[:, :-1]).all())  # ascending
                if ends[0]:
                    assert bool((got[:, 0] == 0).all()) and bool((got[:, -1] == count - 1).all()) == ends[1]
                assert torch.equal(scores.gather(1, got).sort().values, scores.gather(1, ref).sort().values)
                if scores.unique().numel() == scores.numel():
                    assert torch.equal(got, ref)
                two_stage += k2 * 4 < count
    assert two_stage > 10  # the two-stage path really ran


def test_parents_must_split_s1_into_whole_children():
    from mpcache.core.errors import UserError

    for bad in (dict(s2=4, parents=6), dict(s2=4, parents=4), dict(s1=32, s2=4, parents=64)):
        with pytest.raises(UserError, match="parents"):
            make_policy("mpcache", 0.1, **bad)
