"""Every KV-cache policy under two real parties: each MPC selection and token equals the one of the
same policy on PlainBackend with the MPC approximations (up to fixed-point near-ties), on prompts long
enough that the policy really drops tokens."""

from __future__ import annotations

import pytest
import torch

from mpcache.core.approximations import Approximations
from mpcache.core.backend import PlainBackend
from mpcache.models import Transformer, load_model
from mpcache.policies import parse_spec
from tests.test_mpc_two_party import LOGIT_TOL, run_parties

# (policy spec @ budget). s1/s2 are small so that a 256-token prompt has enough clusters for both
# levels (and the composed one-hot); share_skip=0 pairs random:tiny's two layers (leader, follower).
POLICIES = [
    "streaming@0.1",
    "snapkv@0.2",
    "h2o@0.1",
    "quest:page=8@0.1",
    "mpcache:s1=16:s2=8:preset=retrieval@0.1",  # no static stage, token-max clusters, no sharing
    "mpcache:s1=16:s2=8:preset=paper:share_skip=0:r2=0.5@0.1",  # the original design, shared pairs
]


# Fixed-point scores differ from the float ones by ~1e-4, so two candidates closer than that may
# swap places under MPC. Such a swap is allowed (and then replayed); anything else is a bug. The drift
# is relative: scores above SCORE_SCALE in magnitude (e.g. the group-summed, unscaled q.k that picks
# level-1 parents, ~90 on SmolLM2) get a proportionally wider tolerance.
SCORE_TOL = 2e-3
SCORE_SCALE = 10.0


class ReplayBackend(PlainBackend):
    """The plaintext backend that checks each selection against the one the MPC run made (revealed
    by the debug run, in call order) and then continues with the MPC's, so one near-tie swap does
    not make the rest of the run incomparable."""

    def __init__(self, selections: list[list], approx: str = "v1"):
        super().__init__(Approximations.preset(approx))
        self.queue = [torch.tensor(s) for s in selections]
        self.checked = 0

    def _next(self, scores: torch.Tensor, mine: torch.Tensor, forced: torch.Tensor | None = None):
        assert self.queue, "the plaintext run made more selections than the MPC run"
        theirs = self.queue.pop(0)
        assert theirs.shape == mine.shape, (theirs.shape, mine.shape)
        if not torch.equal(theirs, mine):
            for row in range(scores.shape[0]):
                s = scores[row].float()
                picked = torch.zeros_like(s, dtype=torch.bool).scatter_(0, theirs[row], True)
                assert picked.sum() == theirs.shape[-1], f"duplicate picks {theirs[row].tolist()}"
                if forced is not None:
                    must = forced.expand_as(scores)[row].to(torch.bool)
                    assert picked[must].all(), "a forced item was not selected"
                    s = torch.where(must, torch.inf, s)
                if picked.all():
                    continue
                worst_in, best_out = s[picked].min(), s[~picked].max()
                tol = SCORE_TOL * max(1.0, float(best_out.abs()) / SCORE_SCALE)
                assert worst_in > best_out - tol, (
                    f"selection #{self.checked}: MPC kept {worst_in:.5f} below an unkept {best_out:.5f}")
        self.checked += 1
        return theirs

    def topk(self, scores, k, forced=None):
        return self._next(scores, super().topk(scores, k, forced), forced)

    def argmin(self, scores):
        return self._next(-scores, super().argmin(scores))  # the smallest is "picked"


def _has_static_stage(policy) -> bool:
    """Whether the policy does secret work once after prefill (by its spec, not its name)."""
    if policy.name == "mpcache":
        return policy.static or (policy.dynamic and policy._uses_summaries())
    return policy.name in ("snapkv", "h2o", "quest")


def check_runs(record: dict, prompt_len: int, new_tokens: int, approx: str = "v1") -> None:
    m = load_model("random:tiny")
    for run in record["runs"]:
        spec, _, budget = run["policy"].partition("@")
        backend = ReplayBackend(run["selections"], approx)
        model = Transformer(m.config, m.weights, backend)
        cache = model.new_cache(parse_spec(spec, float(budget)))
        # Teacher-forced along the MPC tokens: every MPC token is the plaintext argmax unless the
        # two best logits are a near-tie.
        logits = model.forward(record["prompt_ids"], cache)[-1]
        for step, token in enumerate(run["tokens"]):
            if run["logits"][step] is not None:  # None: the first token of a plaintext prefill
                mine = torch.tensor(run["logits"][step])
                assert (mine - logits).abs().max() < LOGIT_TOL, (run["policy"], step)
            top2 = logits.topk(2).values
            if top2[0] - top2[1] > 2 * LOGIT_TOL:
                assert token == int(logits.argmax()), (run["policy"], step)
            if step + 1 < len(run["tokens"]):
                logits = model.forward([token], cache)[-1]
        assert not backend.queue, "the MPC run made more selections than the plaintext run"
        assert run["cache_lengths"] == [lc.length for lc in cache.layers], run["policy"]
        policy = parse_spec(spec, float(budget))
        name = policy.name
        # Selections were really checked where the policy makes them.
        assert (backend.checked > 0) == (name in ("snapkv", "h2o", "quest", "mpcache")), run["policy"]
        # Eviction really happened: each step attended well under the prompt.
        assert run["mean_attended"] < 0.5 * prompt_len, run["policy"]
        phases = run["phase_bytes"]
        # One-time static stage (Quest: its page bounds; MPCache: static eviction or the cluster
        # summaries, per its options) and per-step selection traffic exactly where the policy has
        # them; StreamingLLM's public slices cost nothing.
        assert (phases.get("static-eviction", 0) > 0) == _has_static_stage(policy), run
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
    policies = ["snapkv@0.25", "h2o@0.2", "mpcache:s1=16:s2=8:preset=paper:r2=0.5@0.1"]
    record = run_parties(tmp_path, "--policy", ",".join(policies), "--prompt-len", "160",
                         "--new-tokens", "4", "--timeout", "120", timeout=900)
    check_runs(record, 160, 4)


@pytest.mark.slow
def test_mpcache_under_the_fast_preset_matches_plaintext(tmp_path):
    """--approx fast: the selections (top-k, argmin, maxima) compare with the dealer's exact ring
    comparison, clusters are attended through the cache's mask; each selection equals the plaintext
    one with the fast numerics."""
    policies = ["mpcache:s1=16:s2=8@0.1", "h2o@0.1", "quest:page=8@0.1",
                "mpcache:s1=16:s2=8:static=false:hierarchy=false:score2=max:group=maxnorm:share=false@0.1"]
    record = run_parties(tmp_path, "--policy", ",".join(policies), "--prompt-len", "256", "--approx", "fast",
                         "--prefill", "plaintext", "--new-tokens", "4", "--timeout", "120", timeout=900)
    check_runs(record, 256, 4, approx="fast")
