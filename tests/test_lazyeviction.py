"""LazyEviction on random:tiny: recurrence tracking, lagged eviction, budget, adapted prompt mode."""

from __future__ import annotations

import math

import pytest
import torch

from mpcache.core.backend import PlainBackend
from mpcache.core.cache import LayerCache
from mpcache.core.errors import UserError
from mpcache.generation.generate import generate
from mpcache.models import Transformer, load_model
from mpcache.policies import make_policy
from mpcache.policies.lazyeviction import LazyEvictionPolicy, recurrence_score, track
from tests.policy_helpers import attended_per_step

T = 300


@pytest.fixture(scope="module")
def tiny():
    return load_model("random:tiny")


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 256, (T,), generator=torch.Generator().manual_seed(3)).tolist()


def _sizes(loaded, policy, ids, steps, backend=None):
    """Keys attended by layer 0 at each decode step."""
    return attended_per_step(loaded, policy, ids, steps, backend)[0]


def test_tracking_by_hand():
    """One token hit at steps 2 and 5 (interval 3), another at every step, a third never."""
    lr = torch.zeros(1, 3, dtype=torch.int32)
    mri = torch.zeros_like(lr)
    for t in range(1, 7):
        a = torch.tensor([[0.5 if t in (2, 5) else 0.0, 0.5, 0.0]])
        track(t, a, lr, mri, alpha=0.1)
    assert lr.tolist() == [[5, 6, 0]] and mri.tolist() == [[3, 1, 0]]
    score = recurrence_score(6, lr, mri)[0]
    s2 = lambda x: 2 / (1 + math.exp(x))  # noqa: E731
    assert score[0].item() == pytest.approx(s2(1 + 1 / 3) + s2(2))
    assert score[1].item() == pytest.approx(s2(1) + s2(0))
    assert score[2].item() == pytest.approx(0.0, abs=1e-6)  # never important: evicted first
    assert score[1] > score[0] > score[2]


def test_evict_keeps_newest_window_and_top_scores():
    policy = LazyEvictionPolicy(budget=0.5)
    cache = LayerCache(torch.arange(10.0).view(1, 10, 1), torch.arange(10.0).view(1, 10, 1))
    # Tokens 1 and 4 recur every step, token 6 every 3 steps; the rest never; newest 2 always kept.
    mri = torch.tensor([[0, 1, 0, 0, 1, 0, 3, 0, 0, 0]], dtype=torch.int32)
    lr = torch.tensor([[0, 9, 0, 0, 9, 0, 8, 0, 9, 9]], dtype=torch.int32)
    cache.state.update(w=2, capacity=5, t=9, since=2, lr=lr, mri=mri)
    policy._evict(cache, PlainBackend())
    assert cache.k.view(-1).tolist() == [1.0, 4.0, 6.0, 8.0, 9.0]
    assert cache.state["mri"].tolist() == [[1, 1, 3, 0, 0]] and cache.state["since"] == 0


@pytest.mark.parametrize("budget", [0.1, 0.2])
def test_adapted_mode_respects_budget_and_evicts_every_w_steps(tiny, prompt, budget):
    n_budget = math.ceil(budget * T)
    w = min(16, n_budget // 5)
    sizes = _sizes(tiny, make_policy("lazyeviction", budget), prompt, 3 * w)
    cap = n_budget - w
    # After the prefill eviction the cache holds C; it grows by one per step and is cut back every W.
    assert sizes == [cap + 1 + (i % w) for i in range(3 * w)]
    assert max(sizes) == n_budget


def test_faithful_mode_waits_w_decode_steps(tiny, prompt):
    policy = make_policy("lazyeviction", 0.2, prompt_window=0, window=8)
    sizes = _sizes(tiny, policy, prompt, 12)
    assert sizes[:8] == [T + 1 + i for i in range(8)]  # no eviction before W decode steps
    assert sizes[8] == math.ceil(0.2 * T) - 8 + 1  # then cut to C = budget - W


def test_prompt_replay_equals_decoding_the_same_tokens(tiny, prompt, monkeypatch):
    """Adapted mode's replay of the last P prompt queries gives the LR/MRI that faithful mode gets
    when the same P tokens are fed as decode steps (eviction switched off to compare states)."""
    monkeypatch.setattr(LazyEvictionPolicy, "_evict", lambda self, cache, backend: None)
    backend = PlainBackend(dtype=torch.float64)
    p, alpha = 24, 5e-3
    adapted = make_policy("lazyeviction", 0.5, prompt_window=p, alpha=alpha)
    model = Transformer(tiny.config, tiny.weights, backend, adapted)
    cache = model.new_cache()
    model.forward(prompt, cache)
    faithful = make_policy("lazyeviction", 0.5, prompt_window=0, alpha=alpha)
    model = Transformer(tiny.config, tiny.weights, backend, faithful)
    cache2 = model.new_cache()
    model.forward(prompt[: T - p], cache2)
    for token in prompt[T - p :]:
        model.forward([token], cache2)
    for a, b in zip(cache.layers, cache2.layers, strict=True):
        assert a.state["t"] == b.state["t"] == p
        assert torch.equal(a.state["lr"], b.state["lr"]) and torch.equal(a.state["mri"], b.state["mri"])
        assert int((a.state["mri"] > 0).sum()) > 0  # something recurred: the comparison is not vacuous


def test_extra_state_counted_and_plaintext_only(tiny, prompt):
    policy = make_policy("lazyeviction", 0.1)
    result = generate(Transformer(tiny.config, tiny.weights, PlainBackend(), policy), prompt, 4)
    lc = result.cache.layers[0]
    assert policy.extra_nbytes(lc) == 2 * 4 * lc.k.shape[0] * lc.length

    class FakeMPC(PlainBackend):
        name = "mpc"

    with pytest.raises(UserError, match="plain backend only"):
        policy = make_policy("lazyeviction", 0.1)
        generate(Transformer(tiny.config, tiny.weights, FakeMPC(), policy), prompt, 2)
