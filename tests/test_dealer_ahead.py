"""The TTP dealer works ahead (protocols/net/ahead.py, ahead_server.py, predict.py,
protocols/ring/itemstream.py): guesses of the next requests, item streams, and exact results."""

import json
import threading
import time

import pytest
import torch

from protocols.net import ahead, ahead_server, dealerlink, links
from protocols.net.ahead import Schedule
from protocols.net.predict import Periodic, answer_elements, header, predict
from protocols.net.runtime import world_size
from protocols.ring import csprng
from protocols.ring.itemstream import ItemKeys, spec_nonce, sync_nonce
from tests import test_dealer_link
from tests.test_dealer_link import EchoServer, _wait_published
from tests.test_mpc_two_party import LOGIT_TOL, check_against_plain, run_parties

KEY = bytes(range(32))
store = test_dealer_link.store  # the fixture: a real TCPStore for the dealer's seat


def test_item_streams_are_keyed_by_item():
    keys, again = ItemKeys(KEY), ItemKeys(KEY)
    a = keys.stream(spec_nonce(3, 5)).ring((64,))
    assert torch.equal(a, again.stream(spec_nonce(3, 5)).ring((64,)))  # the dealer's side
    assert not torch.equal(a, keys.stream(spec_nonce(3, 6)).ring((64,)))
    assert not torch.equal(a, keys.stream(sync_nonce(spec_nonce(3, 5))).ring((64,)))  # namespaces
    assert not torch.equal(a, ItemKeys(bytes(32)).stream(spec_nonce(3, 5)).ring((64,)))
    # one item's draws continue its own stream (the second draw is not the first again)
    s = keys.stream(sync_nonce(0))
    assert not torch.equal(s.ring((8,)), s.ring((8,)))
    with pytest.raises(ValueError):
        spec_nonce(1 << 31, 0)


def _triple(key, rows, cols=64):
    return header("fixed_triple", (key, "matmul", (rows, cols), None))


def test_predict_extrapolates_steps_linearly_or_quadratically():
    steps = [[_triple(k, 1, length), header("cmp_tables", ((2, n), 4, 5, True))]
             for k, length, n in ((4, 20, 10), (9, 21, 15), (14, 22, 21))]
    guess = predict(steps)
    assert guess[0] == _triple(19, 1, 23)  # keys and a length that grow by the same step
    assert guess[1] == header("cmp_tables", ((2, 28), 4, 5, True))  # a count of pairs: 10, 15, 21, 28
    # a prefill then one step: sizes that shrank are kept (never negative), flags are not numbers
    guess = predict([[_triple(1, 30, 30)], [_triple(2, 1, 31)]])
    assert guess == [_triple(3, 1, 32)]
    assert predict([]) == []


def test_a_guess_never_widens_a_table_spec_nor_grows_its_answer_past_twice():
    # a comparison whose digits changed between steps (a new comparison took this slot): the spec
    # is kept, only the shape moves. Extrapolating width 8 -> 9 -> 10 once made a 12 GB guess.
    steps = [[header("cmp_tables", ((144,), d, w, True))] for d, w in ((1, 2), (4, 8), (7, 9))]
    (guess,) = predict(steps)
    assert guess["args"][1:] == [7, 9, True]
    assert answer_elements(guess) <= 2 * answer_elements(steps[-1][0]) + 64
    # the size that counts is the answer's: 2^width entries per digit, twice with m tables
    h = header("cmp_tables", ((3, 4), 2, 9, True))
    assert answer_elements(h) == 12 * 2 * 512 * 2 + 12
    assert answer_elements(header("cmp_tables", ((3, 4), 2, 9, False))) == 12 * 2 * 512 + 12
    # a shape that would grow the answer past twice the last one is not guessed
    grown = [[header("cmp_tables", ((n,), 4, 8, True))] for n in (1, 2, 100)]  # quadratic: 295
    assert predict(grown) == grown[-1]


def _layer(i):
    base = 100 + 7 * i
    size = torch.Size([1, 64])
    return [header("fixed_new", (base, (1, 64))), _triple(base, 1), header("additive", (size, size, "mul")),
            header("trunc_material", ([64], 65536)), header("cmp_tables", ((1, 64), 4, 5, True)),
            header("square", (size,)), _triple(base - 3, 1, 128), header("B2A", (size,)),
            header("fixed_forget", (base - 7,))]


LAYER = len(_layer(0))


def test_periodic_finds_the_layer_and_guesses_the_next():
    seen = Periodic()
    for h in _layer(0) + _layer(1):
        seen.observe(h)
        assert seen.period() in (None, LAYER)
    assert seen.period() == LAYER
    assert seen.extend([], 2 * LAYER, LAYER, LAYER) == _layer(2)


class FakeLink:
    """Party 0's dealer link, recording what it sends (no dealer behind it)."""

    def __init__(self):
        self.sent, self.plain_sent = [], 0

    def send_msg(self, msg, deadline=None):
        self.sent.append(msg)
        self.plain_sent += len(json.dumps(msg))


def _run(schedule, steps):
    """Both parties' decisions: the stream each item draws from (its first values)."""
    out = []
    for n, step in enumerate(steps):
        if n:
            schedule.boundary()
        for h in step:
            schedule.begin(h["function"], links.decode(h["args"]))
            out.append((schedule.item[0], schedule.stream().ring((2,)).tolist()))
    return out


def test_both_parties_decide_alike_and_a_missed_guess_goes_synchronous():
    steps = [_layer(0) + _layer(1) + _layer(2) + _layer(3)]
    for s in range(1, 5):  # steps whose layers shift by 7 keys per step: guessed from the previous
        steps.append([h for i in range(4) for h in _layer(i + 7 * s)])
    steps[3][6] = _triple(999, 2)  # a request nobody guessed
    steps[4][5] = header("fixed_new", (5, (1, 64)))  # a mask mutation nobody guessed
    link = FakeLink()
    server, client = Schedule(ItemKeys(KEY), 0, link), Schedule(ItemKeys(KEY), 1)
    mine, theirs = _run(server, steps), _run(client, steps)
    assert mine == theirs  # same decisions, same item streams, no message to party 1
    kinds = [k for k, _ in mine]
    n = 4 * LAYER
    per_step = [kinds[i:i + n] for i in range(0, len(kinds), n)]
    assert per_step[0][:2 * LAYER] == ["sync"] * 2 * LAYER  # two layers seen: the period is known
    assert per_step[0][2 * LAYER:] == ["spec"] * 2 * LAYER  # the next layers are guessed
    assert per_step[2] == ["spec"] * n  # guessed from the previous steps
    assert per_step[3][6] == "sync" and per_step[3][7] == "spec"  # one miss, the rest still ahead
    assert per_step[4][5] == "sync"  # a missed mutation: synchronous until the layers repeat again
    controls = [m["ctl"] for m in link.sent]
    assert {"abandon", "more", "mut", "sync"} <= set(controls)  # "sync": the unguessed mutations
    assert controls.index("sync") < controls.index("more")  # announced before any guess after them
    assert server.stats.spec + server.stats.sync == server.stats.items == 5 * n


def test_ahead_is_exact_with_missed_guesses(tmp_path):
    """Two parties and the dealer, guesses spoiled in every step: the synchronous fallback keeps
    the result what the plaintext simulation computes, and most requests still go ahead."""
    record = run_parties(tmp_path, "--dealer", "ttp", "--new-tokens", "4", "--mispredict",
                         nproc=world_size("ttp"))
    check_against_plain(record)
    stats = json.loads((tmp_path / "client.json.dealer.json").read_text())
    assert stats["spec"] > 0 and stats["abandons"] > 0 and stats["sync"] > 0
    assert stats["items"] == stats["spec"] + stats["sync"]


@pytest.mark.slow
def test_ahead_and_synchronous_dealers_give_the_same_tokens_and_logits(tmp_path):
    runs = {}
    for mode in ("1", "0"):
        (tmp_path / mode).mkdir()
        runs[mode] = run_parties(tmp_path / mode, "--dealer", "ttp", "--new-tokens", "4", "--approx", "fast",
                                 nproc=world_size("ttp"), env={"MPCACHE_DEALER_AHEAD": mode})
    assert runs["1"]["tokens"] == runs["0"]["tokens"]
    # other randomness, the same computation: equal up to the fixed-point noise of the numerics
    for mine, theirs in zip(runs["1"]["logits"], runs["0"]["logits"], strict=True):
        assert (torch.tensor(mine) - torch.tensor(theirs)).abs().max() < LOGIT_TOL
    stats = json.loads((tmp_path / "1" / "client.json.dealer.json").read_text())
    # the ahead path served part of it (4 tokens: the first steps have no history, so most items of
    # this short run are synchronous; how many depends on the guesses, not on correctness)
    assert stats["spec"] > 0 and stats["sync"] > 0
    assert json.loads((tmp_path / "0" / "client.json.dealer.json").read_text()) == {}  # synchronous


class NoiseServer(EchoServer):
    """A dealer whose answer is party 1's item stream (what a correction term is made of)."""

    def noise(self, shape):
        return csprng.generate_random_ring_element(tuple(shape), generator=self.generators[1])


def test_the_dealer_loop_answers_ahead_by_item(store, monkeypatch):
    """The real dealer loop over the TLS link: guesses answered ahead from the right item streams,
    a missed guess and a guess too large to make ahead both answered on request, then "terminate"."""
    monkeypatch.setenv("MPCACHE_DEALER_AHEAD", "1")
    monkeypatch.setattr(ahead_server, "SPEC_LIMIT", 50)
    box: dict = {}

    def dealer():
        try:
            server = NoiseServer()
            socks = dealerlink.seat(server, 20.0)
            dealerlink.serve(server, socks["server"])
        except Exception as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=dealer, daemon=True)
    t.start()
    _wait_published(store)
    links_of: dict = {}

    def party(role):
        link = links.dial("dealer", role, "dealer", 10)
        links_of[role] = (link, link.recv_exact(csprng.KEY_BYTES + 1, time.monotonic() + 10))

    threads = [threading.Thread(target=party, args=(r,)) for r in ("server", "client")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    (link, k0), (_, k1) = links_of["server"], links_of["client"]
    assert k0[-1:] == k1[-1:] == ahead.ON
    s, theirs = Schedule(ItemKeys(k0[:-1]), 0, link, timeout_s=10), ItemKeys(k1[:-1])
    steps = [[(2, 3), (5,), (7, 11)], [(2, 3), (5,), (7, 11)], [(2, 3), (6,), (7, 11)]]
    for n, step in enumerate(steps):
        if n:
            s.boundary()
        for shape in step:
            s.begin("noise", [shape])
            kind, tag = s.item[0], s.item[1:-1]
            nonce = spec_nonce(*tag) if kind == "spec" else sync_nonce(*tag)
            expected = theirs.stream(nonce).ring(shape)
            assert torch.equal(s.fetch("noise"), expected)
    # step 0 synchronous; then all guessed but (6,) (a miss); (7, 11) is over the limit: made late
    assert (s.stats.spec, s.stats.sync, s.stats.late) == (5, 4, 2)
    link.send_msg({"function": "terminate"})
    t.join(10)
    assert "error" not in box
