"""The randomness attack of issue #19, on the views of real two-party runs (random:tiny).

With CrypTen's MT19937 generators (MPCACHE_INSECURE_RNG=mt19937, the insecure reference) a
semi-honest party recovers the other's secret from what it sees:

- client, TFP: the embedding opens d = x - A with the one-hot x its own, so A = x - d is raw output
  of the server's local generator, which drew the weight masks B just before; rewinding gives B and
  the opened e = W - B gives W.
- client, TTP: likewise A0 = x - d - A1 is raw output of the server's dealer stream; W = e + B0 + B1.
- server, TTP: B1 = W - e - B0 is raw output of the client's dealer stream; predicting its next
  draw A1 unmasks x = d + A0 + A1, the prompt's one-hot.

The attacker uses only its own view (tests/mpc_party.py --record-view: openings and the dealer's
shares, in order) and public facts: the weight names and shapes, the order of the draws. With the
project's AES-CTR streams the same attack recovers nothing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mpcache.models import load_model
from mpcache.models.config import expected_shapes
from protocols.net.launch import torchrun_command
from protocols.net.runtime import world_size

sys.path.insert(0, str(Path(__file__).parent))
import mt19937  # noqa: E402

PARTY = str(Path(__file__).with_name("mpc_party.py"))
MODEL = "random:tiny"
SCALE = 1 << 16  # CrypTen's fixed-point scale
SMALL = 1 << 24  # |W| < 256: any real weight; a wrong mask gives ~2^63


def record_run(tmp_path, dealer: str, insecure: bool) -> tuple[dict, list, list]:
    """One generation of one token; returns the client's record and both parties' views."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("MPCACHE_INSECURE_RNG", None)
    if insecure:
        env["MPCACHE_INSECURE_RNG"] = "mt19937"
    out, prefix = tmp_path / "client.json", tmp_path / "view"
    command = torchrun_command([PARTY, "--out", str(out), "--dealer", dealer, "--new-tokens", "1",
                                "--record-view", str(prefix)], world_size(dealer))
    proc = subprocess.run(command, env=env, timeout=240, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    views = [torch.load(f"{prefix}.{rank}") for rank in (0, 1)]
    return json.loads(out.read_text()), views[0], views[1]


# --- public knowledge --------------------------------------------------------------------------------
def weight_shapes() -> dict[str, tuple]:
    """Names and shapes of the server's weights in the order they are masked (sorted): public."""
    config = load_model(MODEL).config
    return {n: tuple(s) for n, s in sorted(expected_shapes(config).items())}


def parse_view(view: list) -> dict:
    """A party's view split by protocol step: one mask + one opening e = W - B per weight, then the
    embedding's triple (A, C) and its opening d = x - A."""
    names = list(weight_shapes())
    dealt = [e[2] for e in view if e[0] == "dealer"]
    opened = [e[1] for e in view if e[0] == "open"]
    return {"masks": dict(zip(names, [d[0] for d in dealt[: len(names)]], strict=True)),
            "e": dict(zip(names, opened[: len(names)], strict=True)),
            "a": dealt[len(names)][0], "d": opened[len(names)]}


def onehot(ids: list[int], vocab: int) -> torch.Tensor:
    x = torch.zeros(len(ids), vocab, dtype=torch.int64)
    x[torch.arange(len(ids)), torch.tensor(ids)] = SCALE
    return x


def plausible(w: torch.Tensor) -> bool:
    return bool((w.abs() < SMALL).all())


def true_weights() -> dict[str, torch.Tensor]:
    """What the server shares: CrypTen's encoding of its float weights (the server knows these)."""
    return {n: (SCALE * w.float()).long() for n, w in load_model(MODEL).weights.items()}


# --- the attacks -------------------------------------------------------------------------------------
def rewind_masks(raw_after: torch.Tensor, shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """The masks drawn, in order, just before the raw outputs ``raw_after`` of one generator."""
    stream = mt19937.Recovered(mt19937.ring_to_words(raw_after.flatten()[:312].numpy()))
    masks, position = {}, 0
    for name in reversed(list(shapes)):
        n = int(np.prod(shapes[name]))
        position -= 2 * n
        masks[name] = torch.from_numpy(stream.ring(position, n).copy()).view(shapes[name])
    return masks


def client_recovers_weights(view: list, prompt_ids: list[int], dealer: str) -> dict | None:
    """Client's view -> the server's weights (None where a recovered one is not even plausible)."""
    shapes, v = weight_shapes(), parse_view(view)
    x = onehot(prompt_ids, v["d"].shape[-1])
    if dealer == "tfp":  # A is party 0's local draw; the client's B and A shares are zero sharings
        server_raw = x - v["d"]
        mine = dict.fromkeys(shapes, 0)
    else:  # A = A0 + A1, A1 the client's own share; B = B0 + B1 likewise
        server_raw = x - v["d"] - v["a"]
        mine = v["masks"]
    b_server = rewind_masks(server_raw, shapes)
    weights = {n: v["e"][n] + b_server[n] + mine[n] for n in shapes}
    return weights if all(plausible(w) for w in weights.values()) else None


def server_recovers_prompt(view: list, weights: dict[str, torch.Tensor]) -> list[int] | None:
    """Server's view (TTP) -> the client's prompt ids (None where the unmasked x is no one-hot)."""
    shapes, v = weight_shapes(), parse_view(view)
    names = list(shapes)
    client_raw = weights[names[0]] - v["e"][names[0]] - v["masks"][names[0]]  # B1 of the first weight
    stream = mt19937.Recovered(mt19937.ring_to_words(client_raw.flatten()[:312].numpy()))
    # the client's dealer stream then drew B1 of every other weight, then A1 of the embedding
    position = 2 * sum(int(np.prod(s)) for s in shapes.values())
    a1 = torch.from_numpy(stream.ring(position, v["d"].numel()).copy()).view(v["d"].shape)
    x = v["d"] + v["a"] + a1
    rows_ok = ((x == 0) | (x == SCALE)).all(-1) & ((x == SCALE).sum(-1) == 1)
    return x.argmax(-1).tolist() if bool(rows_ok.all()) else None


# --- tests -------------------------------------------------------------------------------------------
def test_mt19937_helper_matches_torch():
    """Two 32-bit outputs per ring element, high word first; forwards and backwards from 624."""
    gen = torch.Generator().manual_seed(2**40 + 17)
    elements = torch.randint(-(2**63), 2**63 - 1, (4000,), generator=gen).numpy()
    words = mt19937.ring_to_words(elements)
    start = 2 * 2500 + 1  # an odd word offset: not aligned with an element or a block
    stream = mt19937.Recovered(words[start : start + 624])
    assert (stream.outputs(-start, len(words)) == words).all()
    assert (stream.ring(-start, len(elements)) == elements).all()
    assert (mt19937.temper(mt19937.untemper(words)) == words).all()


@pytest.mark.slow
@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_mt19937_lets_each_party_recover_the_others_secret(tmp_path, dealer):
    record, server_view, client_view = record_run(tmp_path, dealer, insecure=True)
    truth = true_weights()
    weights = client_recovers_weights(client_view, record["prompt_ids"], dealer)
    assert weights is not None
    for name, w in truth.items():
        assert torch.equal(weights[name], w), name  # exactly, every weight
    if dealer == "ttp":
        assert server_recovers_prompt(server_view, truth) == record["prompt_ids"]


@pytest.mark.slow
@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_the_same_attack_fails_on_the_keyed_streams(tmp_path, dealer):
    record, server_view, client_view = record_run(tmp_path, dealer, insecure=False)
    assert client_recovers_weights(client_view, record["prompt_ids"], dealer) is None
    if dealer == "ttp":
        assert server_recovers_prompt(server_view, true_weights()) is None
