"""Two real processes (torchrun) run the transformer on CrypTen shares; the result must equal
PlainBackend with the same approximations. Faults end both parties with a message, never a hang."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mpcache.core.approximations import Approximations
from mpcache.core.backend import PlainBackend
from mpcache.models import Transformer, load_model
from protocols.net.launch import free_port, torchrun_command
from protocols.net.runtime import world_size

PARTY = str(Path(__file__).with_name("mpc_party.py"))
LOGIT_TOL = 0.1  # fixed-point error of the MPC run vs the plaintext simulation (random:tiny)


def run_parties(tmp_path, *extra, nproc=2, timeout=240, env=None) -> dict:
    """Run tests/mpc_party.py under torchrun and return the client's JSON record."""
    out = tmp_path / "client.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **(env or {}))
    command = torchrun_command([PARTY, "--out", str(out), *extra], nproc)
    proc = subprocess.run(command, env=env, timeout=timeout, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def plain_reference(model_name, prompt_ids, tokens, approx="v1"):
    """Teacher-forced logits of the plaintext simulation along the MPC run's tokens."""
    m = load_model(model_name)
    model = Transformer(m.config, m.weights, PlainBackend(Approximations.preset(approx)))
    cache = model.new_cache()
    logits = [model.forward(prompt_ids, cache)[-1]]
    for t in tokens[:-1]:
        logits.append(model.forward([t], cache)[-1])
    return logits


def check_against_plain(record, model_name="random:tiny", approx="v1"):
    ref = plain_reference(model_name, record["prompt_ids"], record["tokens"], approx)
    for step, (mine, theirs, token) in enumerate(zip(record["logits"], ref, record["tokens"], strict=True)):
        mine = torch.tensor(mine)
        diff = (mine - theirs).abs().max().item()
        assert diff < LOGIT_TOL, f"step {step}: logits differ by {diff}"
        top2 = theirs.topk(2).values
        if top2[0] - top2[1] > 2 * LOGIT_TOL:  # not a near-tie: the secure argmax must agree
            assert token == int(theirs.argmax()), f"step {step}: token {token} vs {int(theirs.argmax())}"
        assert token == int(mine.argmax()) or mine.max() - mine[token] < 1e-3


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_two_party_generation_matches_plaintext_simulation(tmp_path, dealer):
    # --timeout 20: shorter than the whole run, so a watchdog that outlives the rendezvous (the
    # dealer serves the whole session) would kill it.
    record = run_parties(tmp_path, "--dealer", dealer, "--new-tokens", "4", "--timeout", "20",
                         nproc=world_size(dealer))
    assert len(record["tokens"]) == 4
    check_against_plain(record)


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
@pytest.mark.parametrize("preset", ["fast", "fast-lite3"])
def test_fast_numerics_match_their_plaintext_simulation(tmp_path, dealer, preset):
    """The fast preset (dealer comparisons and exp tables, grouped max) under both dealers computes
    what PlainBackend(Approximations.preset("fast")) computes; so does exp in three table digits."""
    record = run_parties(tmp_path, "--dealer", dealer, "--new-tokens", "3", "--approx", preset,
                         nproc=world_size(dealer))
    assert len(record["tokens"]) == 3
    check_against_plain(record, approx=preset)


def test_topk_and_gather_under_mpc_select_what_plaintext_selects(tmp_path):
    # An inherited file:// RENDEZVOUS (an in-process crypten.init() leaves one behind; a stale file
    # hands a dead peer's address) must not be used under torchrun: this one cannot even be created.
    r = run_parties(tmp_path, "--check-selection", env={"RENDEZVOUS": f"file://{tmp_path}/no/such/dir/rdv"})
    scores, values = torch.tensor(r["scores"]), torch.tensor(r["values"])
    plain = PlainBackend()
    idx = plain.topk(scores, 3)  # ascending cache order
    onehot = torch.tensor(r["onehot"]).round()
    assert onehot.shape == (2, 3, 9) and (onehot.sum(-1) == 1).all()
    assert torch.equal(onehot.argmax(-1), idx)  # the same order under MPC: ascending position
    expected = plain.gather(idx, values)
    assert torch.allclose(torch.tensor(r["gathered"]), expected, atol=1e-3)


def test_killed_party_makes_the_other_exit_with_a_message(tmp_path):
    """Both parties as separate commands (as on two machines); kill the server mid-run."""
    port = free_port()
    procs = []
    secret = os.urandom(32).hex()  # given to both out of band, as on two machines
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
                   MPCACHE_SESSION_SECRET=secret)
        cmd = [sys.executable, PARTY, "--out", str(tmp_path / "x.json"), "--timeout", "20",
               "--hang-after-setup"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    server, client = procs
    time.sleep(8)  # both set up; the server now sleeps, the client waits for it
    server.send_signal(signal.SIGKILL)
    start = time.time()
    try:
        _, err = client.communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert client.returncode == 3, err
    # gloo names "the other party"; the TLS link, which usually notices first, "the server closed"
    assert "client" in err and ("other party" in err or "the server closed the connection" in err), err
    assert time.time() - start < 60


def test_wrong_world_size_is_a_clear_error(tmp_path):
    env = dict(os.environ, RANK="0", WORLD_SIZE="3", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    proc = subprocess.run([sys.executable, PARTY, "--out", str(tmp_path / "x.json")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "needs 2 processes" in proc.stderr


def test_missing_environment_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                                  "MASTER_PORT", "RENDEZVOUS")}
    proc = subprocess.run([sys.executable, PARTY, "--out", str(tmp_path / "x.json")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "torchrun" in proc.stderr


def test_mul_hi_never_wraps_on_many_elements(tmp_path):
    """mul_hi (RMSNorm's x / rms, softmax's e / sum) on 8M elements under two processes: no element
    may be off. Before h was split into digits, each element's local truncation of |x h| * 2^40 failed
    with probability |x h| * 2^-24: ~9 expected wraps here (the test passed with probability ~2e-4);
    now each partial product is <~ 2^30 (expected wraps ~3e-4)."""
    r = run_parties(tmp_path, "--check-mul-hi", str(8 << 20))
    assert r["elements"] == 8 << 20
    assert r["max_error"] < 1e-3, f"mul_hi is off by {r['max_error']} (a wrapped local truncation)"


def test_openings_by_message_exchange_equal_gloo_all_reduce(tmp_path):
    """protocols.net.fastcomm opens two-party shares by one message each way over a direct connection
    instead of gloo's all-reduce: the same sums (wrapping int64, batched, empty, transposed inputs,
    one beyond the inline-send size), shapes, and the same counted rounds and bytes."""
    r = run_parties(tmp_path, "--check-openings", timeout=120)
    assert r["linked"]  # the direct connection, not the gloo fallback, carried the exchange
    assert r["exchange"]["values"] == r["allreduce"]["values"]
    assert r["exchange"]["shapes"] == r["allreduce"]["shapes"] == [[[300, 7]], [[7, 300]], [[0]],
                                                                    [[5, 7], [2, 3], []], [[40000]]]
    elements = 2 * 2100 + 35 + 6 + 1 + 40000
    assert r["exchange"]["counted"] == r["allreduce"]["counted"] == [5, 8 * 2 * elements]
