"""KVCrush: importance share + signature representatives, page mode, anchors, and with MiKV."""

import subprocess
import sys

import pytest
import torch

from kernels.signature_ref import hamming_ref, median_thresholds, pack_signatures_ref
from mpcache.core.backend import PlainBackend
from mpcache.core.cache import LayerCache
from mpcache.core.errors import UserError
from mpcache.core.policy import PromptInfo
from mpcache.policies import make_policy
from mpcache.policies.importance import complement, head_window_scores, importance_keep
from mpcache.policies.kvcrush import KVCrushConfig, evenly_spaced, kvcrush_keep, make_anchor


def prompt_layer(t=200, hq=8, hkv=2, d=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(hq, t, d, generator=gen), torch.randn(hkv, t, d, generator=gen)
    return PromptInfo(q, torch.rand(hkv, t, generator=gen), 1), LayerCache(k, torch.randn(hkv, t, d), t)


def test_evenly_spaced():
    assert evenly_spaced(torch.arange(100), 4).tolist() == [12, 37, 62, 87]
    assert evenly_spaced(torch.arange(3), 3).tolist() == [0, 1, 2]
    assert evenly_spaced(torch.arange(5), 0).numel() == 0


def test_anchors():
    sig = torch.tensor([[0b111], [0b011], [0b001]], dtype=torch.int32)
    assert make_anchor(sig, 3, "alternate", 0).tolist() == [0b010]
    assert make_anchor(sig, 3, "mean", 0).tolist() == [0b011]
    rand = make_anchor(sig, 40, "random", 7)
    assert rand.shape == (2,) and int(rand[1]) >> 8 == 0  # no bit beyond the 40 heads


@pytest.mark.parametrize("anchor", ["alternate", "mean", "random"])
def test_keep_is_importance_plus_evenly_spaced_representatives(anchor):
    prompt, lc = prompt_layer()
    backend = PlainBackend()
    cfg = KVCrushConfig(anchor=anchor)
    keep = kvcrush_keep(prompt, lc.k, 40, cfg, backend)[0]
    assert keep.numel() == 40 and torch.equal(keep, keep.unique())
    imp = importance_keep("h2o", prompt, lc.k, 30, backend, per_head=False)[0]
    assert set(imp.tolist()) <= set(keep.tolist())
    reps = sorted(set(keep.tolist()) - set(imp.tolist()))
    # recompute: candidates' signatures, distance order, picks at evenly spaced ranks
    cand = complement(imp[None], 200)[0]
    scores = head_window_scores(prompt, lc.k, cfg.window, backend)[:, cand]
    sig = pack_signatures_ref(scores, median_thresholds(scores))
    dist = hamming_ref(sig, make_anchor(sig, 8, anchor, 0)).long()
    order = torch.sort(dist, stable=True).indices
    assert reps == sorted(cand[evenly_spaced(order, 10)].tolist())
    # representatives span the distance range rather than its low end
    picked = dist[evenly_spaced(order, 10)]
    assert picked.min() == dist.min() or picked.max() > torch.sort(dist).values[9]


def test_page_mode_keeps_whole_pages_of_candidates():
    prompt, lc = prompt_layer()
    cfg = KVCrushConfig(mode="page", page_size=8, rho=0.5)
    keep = kvcrush_keep(prompt, lc.k, 64, cfg, PlainBackend())[0]
    imp = set(importance_keep("h2o", prompt, lc.k, 32, PlainBackend(), per_head=False)[0].tolist())
    reps = sorted(set(keep.tolist()) - imp)
    assert keep.numel() == 64 and len(reps) == 32
    pages = {r // 8 for r in reps}
    assert len(pages) <= 32 // 8 + 1  # whole pages, at most one partly used


def test_policy_evicts_to_budget(tiny):
    from mpcache.generation.generate import generate
    from mpcache.models import Transformer

    policy = make_policy("kvcrush", 0.25)
    res = generate(Transformer(tiny.config, tiny.weights, PlainBackend(), policy), list(range(10, 110)), 3)
    assert all(lc.length == 25 + 2 for lc in res.cache.layers)  # budget + generated tokens


def test_kvcrush_mikv_keeps_everything(tiny):
    from mpcache.generation.generate import generate
    from mpcache.models import Transformer

    policy = make_policy("kvcrush+mikv", 0.25, bits=2, mode="page")
    res = generate(Transformer(tiny.config, tiny.weights, PlainBackend(), policy), list(range(10, 110)), 3)
    for lc in res.cache.layers:
        assert lc.length == 25 and lc.state["k_lo"].rows == 100 + 2 - 25


@pytest.mark.parametrize("option", [{"rho": 1.5}, {"anchor": "zig"}, {"mode": "block"}, {"page_size": 0}])
def test_bad_options(option):
    with pytest.raises(UserError):
        make_policy("kvcrush", 0.2, **option)


@pytest.mark.parametrize("policy", ["mikv", "kvcrush", "kvcrush+mikv"])
def test_cli_generate(policy):
    proc = subprocess.run(
        [sys.executable, "-m", "mpcache", "generate", "--prompt", "hello there", "--model", "random:small",
         "--policy", policy, "--budget", "0.5", "--max-new-tokens", "4"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
