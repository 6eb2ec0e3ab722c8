"""KV-cache policies on random-weight models: budgets, summaries, sharing, static window, exactness."""

from __future__ import annotations

import math

import pytest
import torch

from mpcache.core.backend import PlainBackend
from mpcache.eval import runner
from mpcache.generation.generate import generate
from mpcache.generation.prefill import prefill
from mpcache.models import Transformer, load_model
from mpcache.policies import POLICIES, make_policy, parse_spec
from mpcache.policies.mpcache import MPCachePolicy

T = 600  # prompt tokens
STEPS = 12


@pytest.fixture(scope="module")
def small():
    return load_model("random:small")


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 256, (T,), generator=torch.Generator().manual_seed(1)).tolist()


def _model(loaded, policy, backend=None):
    return Transformer(loaded.config, loaded.weights, backend or PlainBackend(), policy)


def _attended_per_step(loaded, policy, ids, steps=STEPS):
    """Keys attended by each layer at each decode step: [[layer0, layer1, ...], ...]."""
    seen: list[tuple[int, int]] = []
    inner = policy.decode_kv

    def spy(layer, q, cache, backend):
        k, v = inner(layer, q, cache, backend)
        assert k.shape == v.shape
        seen.append((layer, k.shape[1]))
        return k, v

    object.__setattr__(policy, "decode_kv", spy)  # the spec is frozen: a spy on this instance only
    generate(_model(loaded, policy), ids, steps + 1)
    layers = loaded.config.num_layers
    return [[n for _, n in seen[i : i + layers]] for i in range(0, len(seen), layers)]


@pytest.mark.parametrize("budget", [0.1, 0.2])
def test_streaming_and_h2o_attend_exactly_the_budget(small, prompt, budget):
    n_budget = math.ceil(budget * T)
    for name in ("streaming", "h2o"):
        steps = _attended_per_step(small, make_policy(name, budget), prompt)
        assert all(n == n_budget for step in steps for n in step), (name, steps[:2])


def test_snapkv_attends_budget_plus_generated_tokens(small, prompt):
    steps = _attended_per_step(small, make_policy("snapkv", 0.1), prompt)
    for j, step in enumerate(steps, start=1):
        assert step == [math.ceil(0.1 * T) + j] * len(step)


def test_quest_attends_at_most_the_budget_within_a_page(small, prompt):
    n_budget = math.ceil(0.1 * T)
    for step in _attended_per_step(small, make_policy("quest", 0.1), prompt):
        assert all(n_budget - 16 < n <= n_budget for n in step), step


@pytest.mark.parametrize("preset", ["retrieval", "paper"])
@pytest.mark.parametrize("budget", [0.15, 0.2])
def test_mpcache_attends_at_most_the_budget_within_a_cluster(small, prompt, budget, preset):
    # (At tiny budgets the two always-kept end clusters + the tail may exceed it; not at these.)
    n_budget = math.ceil(budget * T)
    for step in _attended_per_step(small, make_policy("mpcache", budget, preset=preset), prompt):
        assert all(n_budget - 16 < n <= n_budget for n in step), step


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_budget_one_reproduces_full_logits_exactly(small, prompt, name):
    def logits_of(policy):
        model = _model(small, policy)
        cache = model.new_cache()
        out = [model.forward(prompt[:200], cache)]
        for token in prompt[200:210]:
            out.append(model.forward([token], cache))
        return torch.cat(out)

    assert torch.equal(logits_of(make_policy("full")), logits_of(make_policy(name, 1.0)))


def test_compressed_policies_change_the_logits(small, prompt):
    """The exactness test above is not vacuous: at a small budget every policy differs from full."""
    full = generate(_model(small, make_policy("full")), prompt, 8).new_ids
    untrained = {"locret": {"weights": "untrained"}, "attention-gate": {"weights": "untrained"}}
    for name in sorted(set(POLICIES) - {"full"}):
        model = _model(small, make_policy(name, 0.05, **untrained.get(name, {})))
        cache = model.new_cache()
        model.forward(prompt, cache)
        ref = _model(small, make_policy("full"))
        ref_cache = ref.new_cache()
        ref.forward(prompt, ref_cache)
        assert not torch.equal(model.forward([full[0]], cache), ref.forward([full[0]], ref_cache)), name


def test_mpcache_summaries_computed_once_per_filled_cluster(small, prompt):
    policy = make_policy("mpcache", 0.1, preset="paper")
    result = generate(_model(small, policy), prompt, 40)
    for lc in result.cache.layers:
        summaries = lc.state.get("summaries")
        if lc.state["role"] == "follower":
            assert summaries is None
            continue
        n, d = lc.length, lc.k.shape[-1]
        # Every full cluster summarised exactly once (a recomputation would push the count past it)...
        assert summaries.computed2 == n // 16 and summaries.bounds2.count == n // 16
        assert summaries.computed1 == n // 32
        # ...and incrementally built summaries equal a direct recomputation on the final cache.
        c2 = lc.k[:, : (n // 16) * 16].reshape(lc.k.shape[0], n // 16, 16, d)
        torch.testing.assert_close(summaries.c2, 0.6 * c2.amax(2) + 0.4 * c2.amin(2))
        c1 = lc.k[:, : (n // 32) * 32].reshape(lc.k.shape[0], n // 32, 32, d)
        torch.testing.assert_close(summaries.c1, 0.6 * c1.amax(2) + 0.4 * c1.amin(2))


class CountingBackend(PlainBackend):
    def __init__(self):
        super().__init__()
        self.topk_calls = 0

    def topk(self, scores, k, forced=None):
        self.topk_calls += 1
        return super().topk(scores, k, forced)


def test_mpcache_roles_follow_the_design_pattern():
    policy = MPCachePolicy(preset="paper")
    roles = [policy.role(i, 30) for i in range(30)]
    assert roles[:2] == roles[28:] == ["alone", "alone"]
    assert roles[2:28] == ["leader", "follower"] * 13
    assert [MPCachePolicy(preset="paper", share=False).role(i, 30) for i in range(30)] == ["alone"] * 30
    assert [MPCachePolicy(preset="retrieval").role(i, 30) for i in range(30)] == ["alone"] * 30  # no sharing


def test_mpcache_follower_layer_does_no_selection_work(small, prompt):
    # random:small has 8 layers: 0, 1, 6, 7 alone; (2, 3) and (4, 5) shared -> 6 layers select.
    policy = make_policy("mpcache", 0.1, preset="paper")
    backend = CountingBackend()
    model = _model(small, policy, backend)
    cache = model.new_cache()
    model.forward(prompt, cache)
    static_calls = backend.topk_calls
    assert static_calls == 6  # one static top-k per selecting layer
    backend.topk_calls = 0
    model.forward([5], cache)
    assert backend.topk_calls == 6 * 2  # level 1 + level 2 per selecting layer, none for followers
    unshared = make_policy("mpcache", 0.1, preset="paper", share=False)
    backend2 = CountingBackend()
    model2 = _model(small, unshared, backend2)
    cache2 = model2.new_cache()
    model2.forward(prompt, cache2)
    backend2.topk_calls = 0
    model2.forward([5], cache2)
    assert backend2.topk_calls == 8 * 2
    for follower in (3, 5):
        assert "summaries" not in cache.layers[follower].state
        # The follower attends its own keys at the leader's chosen positions.
        lead, own = cache.layers[follower].sequence["dynamic"][follower - 1], cache.layers[follower]
        keys, _ = policy._apply(lead, own, backend)
        assert keys.shape[1] == cache.layers[follower - 1].attended // cache.layers[follower - 1].decode_steps


def test_mpcache_static_eviction_keeps_the_window(small, prompt):
    policy = make_policy("mpcache", 0.1, preset="paper", dynamic=False)
    model = _model(small, policy)
    full_cache = _model(small, make_policy("full")).new_cache()
    _model(small, make_policy("full")).forward(prompt, full_cache)
    cache = model.new_cache()
    model.forward(prompt, cache)
    window, kept = math.ceil(0.2 * T), math.ceil(0.3 * T)
    for lc, ref in zip(cache.layers, full_cache.layers, strict=True):
        assert lc.length == kept
        assert torch.equal(lc.k[:, -window:], ref.k[:, -window:])
        assert torch.equal(lc.v[:, -window:], ref.v[:, -window:])
        # The rest are prompt tokens in cache order (rows of the full cache, ascending).
        rows = [int((ref.k[0] == row).all(-1).nonzero()[0]) for row in lc.k[0, : kept - window]]
        assert rows == sorted(rows) and rows[-1] < T - window


@pytest.mark.parametrize("spec", ["streaming", "h2o", "snapkv", "quest", "mpcache:preset=retrieval",
                                  "mpcache:preset=paper", "mpcache:preset=paper:static=false"])
def test_prefill_once_runner_matches_plain_generate(small, prompt, spec):
    expected = generate(_model(small, parse_spec(spec, 0.1)), prompt, 10).new_ids
    model = _model(small, make_policy("full"))
    pre = prefill(model, prompt)
    for _ in range(2):  # a second run from the same prefill is unaffected by the first
        assert runner.greedy(model, pre, parse_spec(spec, 0.1), 10, ()).new_ids == expected


def test_policy_options_are_checked():
    from mpcache.core.errors import UserError

    with pytest.raises(UserError, match="bad policy option"):
        parse_spec("h2o:rho=0.3")
    with pytest.raises(UserError, match="bad value"):
        parse_spec("mpcache:static=maybe")
    with pytest.raises(UserError, match="multiple"):
        parse_spec("mpcache:s1=24:s2=16")
    assert parse_spec("mpcache:static=false:r2=0.25", 0.1).r2 == 0.25


def _reference_selection(k: torch.Tensor, q: torch.Tensor, k1: int, k2: int) -> list[torch.Tensor]:
    """DESIGN §4's dynamic selection, written directly, one KV head at a time (no Backend)."""
    hkv, n, d = k.shape
    g = q.shape[0] // hkv
    full1, out = n // 32, []
    for h in range(hkv):
        qs = q[h * g : (h + 1) * g, 0].sum(0)
        l1 = k[h, : full1 * 32].reshape(full1, 32, d)
        l2 = k[h, : full1 * 32].reshape(full1 * 2, 16, d)
        s1 = (0.6 * l1.amax(1) + 0.4 * l1.amin(1)) @ qs
        s1[0] += 1e4
        s1[-1] += 1e4
        clusters1 = sorted(torch.topk(s1, k1).indices.tolist())
        s2 = (0.6 * l2.amax(1) + 0.4 * l2.amin(1)) @ qs
        s2[0] += 1e4
        s2[-1] += 1e4
        children = [2 * c + j for c in clusters1 for j in (0, 1)]
        best = torch.topk(s2[children], k2).indices.tolist()
        chosen = sorted(children[i] for i in best)
        rows = [k[h, 16 * c : 16 * c + 16] for c in chosen] + [k[h, full1 * 32 :]]
        out.append(torch.cat(rows))
    return out


@pytest.mark.parametrize("length", [400, 413])
def test_mpcache_dynamic_selection_matches_a_direct_reference(length):
    from mpcache.core.cache import LayerCache
    from mpcache.core.policy import PromptInfo

    gen = torch.Generator().manual_seed(length)
    k, v = torch.randn(2, 3, length, 8, generator=gen)
    q = torch.randn(9, 1, 8, generator=gen)
    policy = make_policy("mpcache", 0.2, preset="paper", static=False)
    cache, backend = LayerCache(), PlainBackend()
    cache.append(k, v, backend)
    policy.after_prefill(0, PromptInfo(None, None, num_layers=1), cache, backend)
    keys, values = policy.decode_kv(0, q, cache, backend)
    full1, tail = length // 32, length % 32
    k1, k2 = math.ceil(0.5 * full1), (math.ceil(0.2 * length) - tail) // 16
    expected = _reference_selection(k, q, k1, k2)
    assert keys.shape == (3, k2 * 16 + tail, 8)
    for h in range(3):
        assert torch.equal(keys[h], expected[h])
        rows = [int((k[h] == row).all(-1).nonzero()[0]) for row in keys[h]]
        assert torch.equal(values[h], v[h, rows])
