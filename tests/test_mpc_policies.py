"""Every KV-cache policy under two real parties: the MPC tokens equal the tokens of the same policy on
PlainBackend with the MPC approximations, on prompts long enough that the policy really drops tokens."""

from __future__ import annotations

import pytest

from mpcache.backend import Approximations, PlainBackend
from mpcache.generate import generate
from mpcache.models import Transformer, load_model
from mpcache.policies import parse_spec
from tests.test_mpc_two_party import run_parties

# (policy spec @ budget). s1/s2 are small so that a 256-token prompt has enough clusters for both
# levels (and the composed one-hot); share_skip=0 pairs random:tiny's two layers (leader, follower).
POLICIES = [
    "streaming@0.1",
    "snapkv@0.2",
    "h2o@0.1",
    "quest:page=8@0.1",
    "mpcache:s1=16:s2=8@0.1",
    "mpcache:s1=16:s2=8:share_skip=0:r2=0.5@0.1",
]


def plain_tokens(prompt_ids: list[int], item: str, new_tokens: int):
    spec, _, budget = item.partition("@")
    m = load_model("random:tiny")
    model = Transformer(m.config, m.weights, PlainBackend(Approximations(exact=False)))
    result = generate(model, prompt_ids, new_tokens, policy=parse_spec(spec, float(budget)))
    return result.new_ids, result.cache


def check_runs(record: dict, prompt_len: int, new_tokens: int) -> None:
    for run in record["runs"]:
        tokens, cache = plain_tokens(record["prompt_ids"], run["policy"], new_tokens)
        assert run["tokens"] == tokens, run["policy"]
        assert run["cache_lengths"] == [lc.length for lc in cache.layers], run["policy"]
        # Eviction really happened: each step attended well under the prompt.
        assert run["mean_attended"] < 0.5 * prompt_len, run["policy"]
        name = run["policy"].split(":")[0].split("@")[0]
        phases = run["phase_bytes"]
        # One-time static stage (Quest: its page bounds) and per-step selection traffic exactly
        # where the policy has them; StreamingLLM's public slices cost nothing.
        assert (phases.get("static-eviction", 0) > 0) == (name in ("snapkv", "h2o", "quest", "mpcache")), run
        assert (phases.get("selection", 0) > 0) == (name in ("h2o", "quest", "mpcache")), run


@pytest.mark.slow
def test_every_policy_under_mpc_matches_plaintext_with_plaintext_prefill(tmp_path):
    """--prefill plaintext (the cost-benchmark mode): static stages and decode under 2PC."""
    record = run_parties(tmp_path, "--policy", ",".join(POLICIES), "--prompt-len", "256",
                         "--prefill", "plaintext", "--new-tokens", "5", "--timeout", "120", timeout=900)
    assert [r["policy"] for r in record["runs"]] == POLICIES
    check_runs(record, 256, 5)


@pytest.mark.slow
def test_policies_under_mpc_prefill_read_the_secret_prompt_attention(tmp_path):
    """A private prefill: the static stages read the window rows the MPC prefill computed."""
    policies = ["snapkv@0.25", "h2o@0.2", "mpcache:s1=16:s2=8:r2=0.5@0.1"]
    record = run_parties(tmp_path, "--policy", ",".join(policies), "--prompt-len", "160",
                         "--new-tokens", "4", "--timeout", "120", timeout=900)
    check_runs(record, 160, 4)
