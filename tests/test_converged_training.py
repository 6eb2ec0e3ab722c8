"""The converged training recipe (cached features, early stop) on random:tiny: training lowers the
held-out loss, and a trained scorer keeps other tokens than an untrained one."""

from __future__ import annotations

import pytest
import torch

from mpcache.core.backend import PlainBackend
from mpcache.eval import runner
from mpcache.generation.prefill import prefill
from mpcache.learned import fit, train_recipe
from mpcache.models import Transformer, load_model
from mpcache.policies import make_policy, parse_spec
from tests.policy_helpers import attended_per_step


@pytest.fixture(scope="module")
def tiny():
    return load_model("random:tiny")


def _kept_keys(loaded, policy, ids):
    return [lc.k.clone() for lc in attended_per_step(loaded, policy, ids, 2)[1].cache.layers]


@pytest.mark.parametrize("kind,steps", [("locret", 60), ("attention-gate", 80)])
def test_training_lowers_held_out_loss_and_changes_the_kept_tokens(tiny, tmp_path, monkeypatch, kind, steps):
    monkeypatch.setenv("MPCACHE_CACHE", str(tmp_path))
    records = tmp_path / "records.jsonl"
    meta = train_recipe.train_converged(kind, tiny, seed=0, steps=steps, sequences=4, progress=False,
                                        records=str(records))
    assert meta["val_after"]["loss"] < 0.85 * meta["val_before"]["loss"]
    assert meta["corpus"]["name"] == "wiki-vital-summaries-en" and meta["corpus"]["tokens"]["train"] > 1e6
    lines = records.read_text().splitlines()
    assert len(lines) == meta["steps"] + 1  # step 0 (held-out loss before training) + one per step
    ids = torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(3)).tolist()
    trained = _kept_keys(tiny, make_policy(kind, 0.1), ids)
    untrained = _kept_keys(tiny, make_policy(kind, 0.1, weights="untrained"), ids)
    assert all(a.shape == b.shape for a, b in zip(trained, untrained, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(trained, untrained, strict=True))


def test_early_stop_when_the_held_out_loss_is_flat():
    cfg = fit.FitConfig(patience=3, tol=0.01, min_steps=0)
    assert not fit.converged([5.0, 4.0, 3.0, 2.0, 1.0], cfg, 100)
    assert fit.converged([5.0, 2.0, 2.0, 1.995, 2.01], cfg, 100)
    assert not fit.converged([5.0, 2.0, 2.0, 1.995, 2.01], fit.FitConfig(patience=3, min_steps=200), 100)
    assert fit.lr_factor(cfg, cfg.max_steps) == pytest.approx(cfg.floor)


def test_locret_faithful_chunked_prefill_matches_the_replay_where_it_must(tiny):
    """Layer 0's keys depend on the token alone, so the faithful schedule keeps exactly the replay's
    tokens there; deeper layers see only the retained cache, so their keys differ. Same budget."""
    model = Transformer(tiny.config, tiny.weights, PlainBackend())
    ids = torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(4)).tolist()
    pre = prefill(model, ids)
    spec = "locret:weights=untrained:chunk=16"
    out = {}
    for mode in ("false", "true"):
        policy = parse_spec(f"{spec}:faithful={mode}", 0.2)
        cache, logits = runner._start(model, pre, policy)
        run = runner.greedy(model, pre, parse_spec(f"{spec}:faithful={mode}", 0.2), 4, ())
        out[mode] = (cache, logits, run)
    (replay, _, r_run), (faithful, f_logits, f_run) = out["false"], out["true"]
    torch.testing.assert_close(faithful.layers[0].k, replay.layers[0].k)
    assert faithful.layers[1].k.shape == replay.layers[1].k.shape
    assert not torch.allclose(faithful.layers[-1].k, replay.layers[-1].k)
    assert not torch.allclose(f_logits, pre.logits)
    assert f_run.mean_attended == r_run.mean_attended == parse_spec(spec, 0.2).budget_tokens(300)
    assert parse_spec(f"{spec}:faithful=true", 1.0).own_prefill(model, ids) is None
