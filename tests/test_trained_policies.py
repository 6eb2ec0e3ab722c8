"""Locret and Attention-Gate on random:tiny: what is kept, the budget, and that training works."""

from __future__ import annotations

import math

import pytest
import torch

from mpcache.core.backend import PlainBackend
from mpcache.core.errors import UserError
from mpcache.generation.generate import generate
from mpcache.generation.prefill import prefill
from mpcache.learned import loop
from mpcache.learned.gate import Gates, gated_forward
from mpcache.learned.gate_train import GateTrainConfig, train_gates
from mpcache.learned.locret import LocretTrainConfig, train_heads
from mpcache.models import Transformer, load_model
from mpcache.policies import make_policy
from mpcache.policies.locret import chunked_keep
from tests.policy_helpers import attended_per_step

T = 300


@pytest.fixture(scope="module")
def tiny():
    return load_model("random:tiny")


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 256, (T,), generator=torch.Generator().manual_seed(5)).tolist()


def _run(loaded, policy, ids, steps, backend=None):
    """(keys attended by layer 0 per decode step, final cache)."""
    seen, result = attended_per_step(loaded, policy, ids, steps, backend)
    return seen, result.cache


def _full_keys(loaded, ids):
    return generate(Transformer(loaded.config, loaded.weights, PlainBackend()), ids, 1).cache


def test_chunked_keep_without_stabilizers_is_global_topk():
    cis = torch.randn(3, 200, generator=torch.Generator().manual_seed(0))
    got = chunked_keep(cis, 30, 16, stab=0)
    assert torch.equal(got, cis.topk(30, dim=1).indices.sort(1).values)


def test_chunked_keep_stabilizers_force_the_newest_before_each_cut_but_the_last():
    cis = torch.tensor([[5.0, 4.0, 0.2, 0.1, 3.0, 2.0, 0.3, 0.4]])
    # chunk 2, keep 3, 1 stabilizer. Four tokens: the cut after [2, 3] is the last, nothing forced.
    assert chunked_keep(cis[:, :4], 3, 2, stab=1).tolist() == [[0, 1, 2]]
    # Eight: after [2, 3] token 3 is forced in; after [4, 5] token 5 is forced in and displaces the
    # better token 4 (gone for good); the last cut keeps 5 on merit. Global top-3 would be 0, 1, 4.
    assert chunked_keep(cis, 3, 2, stab=1).tolist() == [[0, 1, 5]]


@pytest.mark.parametrize("name", ["locret", "attention-gate"])
def test_budget_exact_and_question_kept(tiny, prompt, name):
    budget = 0.1
    b = math.ceil(budget * T)
    sizes, _ = _run(tiny, make_policy(name, budget, weights="untrained"), prompt, 6)
    assert sizes == [b] * 6  # every decode step attends exactly the budget
    _, cache = _run(tiny, make_policy(name, budget, weights="untrained"), prompt, 0)  # prefill only
    full = _full_keys(tiny, prompt)
    local = min(32, b // 4)
    for lc, ref in zip(cache.layers, full.layers, strict=True):
        assert lc.length == b
        # The last `local` prompt tokens (the question) are kept as they are...
        assert torch.allclose(lc.k[:, b - local :], ref.k[:, T - local : T], atol=1e-5)
        if name == "attention-gate":  # ...and so are attention-gate's sinks.
            assert torch.allclose(lc.k[:, :4], ref.k[:, :4], atol=1e-5)


def test_locret_keeps_the_top_scored_tokens(tiny, prompt):
    """At prefill (decode eviction off, no stabilizers, one chunk) the kept prefix = top-CIS tokens."""
    policy = make_policy("locret", 0.1, weights="untrained", stabilizers=0.0, decode_evict=False,
                         chunk=10_000)
    _, cache = _run(tiny, policy, prompt, 1)
    full = _full_keys(tiny, prompt)
    b = math.ceil(0.1 * T)
    local = min(32, b // 4)
    pre = prefill(Transformer(tiny.config, tiny.weights, PlainBackend()), prompt)  # the prompt q
    for layer, (lc, ref) in enumerate(zip(cache.layers, full.layers, strict=True)):
        q = pre.prompts[layer].q
        cis = policy._cis(layer, tiny.config, q, ref.k[:, :T], ref.v[:, :T], torch.arange(T))
        top = cis[:, : T - local].topk(b - local, dim=1).indices.sort(1).values
        want = ref.k.gather(1, top[..., None].expand(-1, -1, ref.k.shape[-1]))
        assert torch.allclose(lc.k[:, : b - local], want, atol=1e-5)


def test_trained_policies_refuse_mpc_and_missing_weights(tiny, prompt, tmp_path, monkeypatch):
    class FakeMPC(PlainBackend):
        name = "mpc"

    for name in ("locret", "attention-gate"):
        with pytest.raises(UserError, match="plain backend only"):
            _run(tiny, make_policy(name, 0.1, weights="untrained"), prompt, 1, FakeMPC())
        monkeypatch.setenv("MPCACHE_CACHE", str(tmp_path))
        with pytest.raises(UserError, match="mpcache train"):
            _run(tiny, make_policy(name, 0.1), prompt, 1)


def test_locret_training_reduces_loss_and_is_deterministic(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MPCACHE_CACHE", str(tmp_path))
    model = Transformer(tiny.config, tiny.weights, PlainBackend())
    cfg = LocretTrainConfig(seq_len=48, prompt_len=36, steps=25, hidden=32, lr=5e-3, val_sequences=2)
    meta = train_heads(model, tiny.tokenizer, "tiny", cfg, progress=False)
    assert meta["val_after"]["loss"] < 0.8 * meta["val_before"]["loss"]
    first = torch.load(tmp_path / "locret" / "tiny-seed0.pt", weights_only=True)["state"]
    cfg.steps = 3
    train_heads(model, tiny.tokenizer, "tiny2", cfg, progress=False)
    train_heads(model, tiny.tokenizer, "tiny3", cfg, progress=False)
    a = torch.load(tmp_path / "locret" / "tiny2-seed0.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "locret" / "tiny3-seed0.pt", weights_only=True)["state"]
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["fc1"], first["fc1"])


def test_loop_resumes_to_the_same_weights(tmp_path):
    data = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))

    def make():
        torch.manual_seed(0)
        return torch.nn.Linear(4, 1)

    def run(module, path, crash_at=None):
        def step(i):
            if i == crash_at:
                raise KeyboardInterrupt
            return ((module(data) - 1.0) ** 2).mean()

        cfg = loop.LoopConfig(20, 0.05, checkpoint_every=5)
        return loop.train("toy", path, module, cfg, step, {"m": 1}, False)

    ref = make()
    run(ref, tmp_path / "ref.pt")
    resumed = make()
    with pytest.raises(KeyboardInterrupt):
        run(resumed, tmp_path / "x.pt", crash_at=12)
    again = make()  # a fresh process: starts from the checkpoint of step 10
    out = run(again, tmp_path / "x.pt")
    assert len(out["losses"]) == 20
    assert torch.allclose(again.weight, ref.weight) and torch.allclose(again.bias, ref.bias)


def test_gated_forward_matches_the_transformer(tiny, prompt):
    ids = prompt[:80]
    ref = Transformer(tiny.config, tiny.weights, PlainBackend())
    want = ref.forward(ids, ref.new_cache(), all_logits=True)
    got, _ = gated_forward(tiny.weights, tiny.config, ids, None)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    keep_all = Gates(tiny.config, bias=50.0)  # every flag 1: the same model
    got2, keep = gated_forward(tiny.weights, tiny.config, ids, keep_all)
    torch.testing.assert_close(got2, want, atol=1e-4, rtol=1e-4)
    drop_all = Gates(tiny.config, bias=-50.0)  # only sinks + window: a different model
    got3, _ = gated_forward(tiny.weights, tiny.config, ids, drop_all, sinks=2, window=4)
    assert not torch.allclose(got3[20:], want[20:], atol=1e-2)
    torch.testing.assert_close(got3[:4], want[:4], atol=1e-4, rtol=1e-4)  # nothing evicted yet


def test_gate_training_moves_towards_the_target_rate(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MPCACHE_CACHE", str(tmp_path))
    cfg = GateTrainConfig(seq_len=32, steps=15, lr=3e-2, val_sequences=1, target=0.8)
    meta = train_gates(tiny, "tiny", cfg, progress=False)
    assert meta["losses"][-1] < meta["losses"][0]
    assert meta["val_after"]["natural_eviction_rate"] > meta["val_before"]["natural_eviction_rate"] + 0.2


def test_eval_trains_missing_weights_first_and_says_so(tiny, tmp_path, monkeypatch, capsys):
    from mpcache.programs.commands import train as train_command

    monkeypatch.setenv("MPCACHE_CACHE", str(tmp_path))
    calls = []

    def fake_train(kind, loaded, seed=0, progress=True, **_):
        calls.append((kind, seed))
        path = make_policy(kind, 0.5, seed=seed).weights_path(loaded.config)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        return {}

    monkeypatch.setattr(train_command, "train", fake_train)
    specs = ["full", "locret", "attention-gate:seed=2", "locret:weights=untrained", "lazyeviction"]
    train_command.ensure_trained(specs, tiny, progress=False)
    assert calls == [("locret", 0), ("attention-gate", 2)]
    assert "training them now" in capsys.readouterr().err
    train_command.ensure_trained(specs, tiny, progress=False)  # weights there now: nothing to do
    assert len(calls) == 2


def test_locret_sinks_option_keeps_the_first_tokens(tiny, prompt):
    full = _full_keys(tiny, prompt)
    _, cache = _run(tiny, make_policy("locret", 0.1, weights="untrained", sinks=4), prompt, 6)
    for lc, ref in zip(cache.layers, full.layers, strict=True):
        assert torch.allclose(lc.k[:, :4], ref.k[:, :4], atol=1e-5)
