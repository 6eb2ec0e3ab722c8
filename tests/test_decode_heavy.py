"""The decode-heavy task: a long continuation decoded token by token with the cache capped throughout."""

from __future__ import annotations

import math

import pytest
import torch

from mpcache.core.backend import PlainBackend
from mpcache.core.errors import UserError
from mpcache.eval import decode_heavy, runner
from mpcache.eval.sweep import SweepConfig, run_sweep
from mpcache.eval.tasks import build_sample
from mpcache.generation.prefill import prefill
from mpcache.models import Transformer, load_model
from mpcache.policies import parse_spec

PREFIX, DECODED, BUDGET = 160, 200, 0.1
CAPPED = ["streaming", "h2o", "lazyeviction", "locret:weights=untrained", "attention-gate:weights=untrained"]


@pytest.fixture(scope="module")
def tiny_model():
    loaded = load_model("random:tiny")
    return loaded, Transformer(loaded.config, loaded.weights, PlainBackend())


@pytest.fixture(scope="module")
def records(tiny_model):
    loaded, model = tiny_model
    specs = ["full", *CAPPED, "lazyeviction:prompt_window=0"]
    cfg = SweepConfig(decode_heavy.TASK, specs, [BUDGET], [PREFIX],
                      samples=1, seed=2, model="random:tiny", details=True, decode_tokens=DECODED)
    return {r["policy"]: r for r in run_sweep(cfg, model, loaded.tokenizer)}


def test_every_policy_is_capped_at_a_fraction_of_the_whole_sequence_during_decode(records):
    cap = math.ceil(BUDGET * (PREFIX + DECODED))  # 36: well below the 160-token prefix
    full = records["full"]
    assert full["max_held_tokens"] == PREFIX + DECODED and full["max_step_keys"] == PREFIX + DECODED
    assert "cap_tokens" not in full
    for spec in CAPPED:
        rec = records[spec]
        assert rec["cap_tokens"] == cap and rec["capped"] is True, spec
        # The cap binds: each policy attends all of it at some step, and never holds or attends more
        # (LazyEviction evicts after attending: it holds at most cap - 1 between steps).
        assert rec["max_step_keys"] == cap and cap - 1 <= rec["max_held_tokens"] <= cap, spec
        assert rec["mean_new_tokens"] == DECODED and rec["mean_attended_tokens"] <= cap
        assert rec["perplexity"] != full["perplexity"]  # the evicted tokens changed the predictions
    # LazyEviction's faithful mode does not compress the prompt: the check sees it exceed the cap.
    faithful = records["lazyeviction:prompt_window=0"]
    assert faithful["capped"] is False and faithful["max_held_tokens"] > PREFIX


def test_full_cache_decode_matches_one_forward_pass(tiny_model):
    loaded, model = tiny_model
    sample = build_sample(decode_heavy.TASK, loaded.tokenizer, PREFIX, 2, 0, DECODED)
    assert len(sample.prompt_ids) == PREFIX and len(sample.targets) == DECODED + 1
    pre = prefill(model, sample.prompt_ids, [parse_spec("full")])
    stepped = runner.teacher_forced(model, pre, parse_spec("full"), sample.targets).nll
    reference = decode_heavy.one_pass_nll(model, sample.prompt_ids, sample.targets)
    assert len(stepped) == len(reference) == DECODED
    torch.testing.assert_close(torch.tensor(stepped), torch.tensor(reference), rtol=1e-4, atol=1e-4)
    assert runner.perplexity(stepped) == pytest.approx(math.exp(sum(reference) / DECODED), rel=1e-5)


def test_a_budget_the_prefix_cannot_hold_is_refused():
    assert decode_heavy.policy_budget(0.1, 512, 1024) == pytest.approx(0.3)
    assert decode_heavy.cap_tokens(0.1, 512, 1024) == 154
    assert decode_heavy.policy_budget(1.0, 512, 1024) == 1.0
    with pytest.raises(UserError, match="longer --length"):
        decode_heavy.policy_budget(0.5, 512, 1024)
