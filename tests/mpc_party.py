"""One party of the two-party test run (started by tests/test_mpc_two_party.py via torchrun).

The client writes its tokens and the logits it was shown (debug reveal) to --out as JSON.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols.net import ahead, links, runtime  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="random:tiny")
    p.add_argument("--dealer", default="tfp")
    p.add_argument("--prompt", default="Hello MPC world")
    p.add_argument("--new-tokens", type=int, default=4)
    p.add_argument("--approx", default="v1", help="approximation preset (mpcache.core.backend.PRESETS)")
    p.add_argument("--policy", default="full", help="NAME[:KEY=VALUE...][@BUDGET], comma-separated")
    p.add_argument("--budget", type=float, default=1.0)
    p.add_argument("--prompt-len", type=int, default=0, help="a seeded prompt of N ids (instead of --prompt)")
    p.add_argument("--prefill", choices=["mpc", "plaintext"], default="mpc")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--hang-after-setup", action="store_true", help="fault test: sleep forever")
    p.add_argument("--check-selection", action="store_true", help="run topk + gather on fixed inputs")
    p.add_argument("--check-topk", default="", metavar="METHODS",
                   help="run each top-k construction (comma list) on random and tied scores")
    p.add_argument("--check-mul-hi", type=int, default=0, metavar="N",
                   help="run nonlinear.mul_hi on N elements of random sizes, write the max error")
    p.add_argument("--check-openings", action="store_true",
                   help="open shares by the message exchange and by gloo's all-reduce; write both")
    p.add_argument("--record-view", default="", metavar="PREFIX",
                   help="attack test: each party saves its view (openings, dealer shares) to PREFIX.<rank>")
    p.add_argument("--mispredict", action="store_true",
                   help="ahead test: both parties spoil guesses of the dealer schedule")
    p.add_argument("--out", required=True)
    p.add_argument("--capture-dump", action="store_true",
                   help="capture test: each party writes samples of the plaintext it sent and received, "
                        "the opened sums and its keys to OUT.rankR.json")
    links.add_flags(p)
    args = p.parse_args()
    links.apply_flags_or_exit(args)
    samples: dict[str, list[str]] = {"sent": [], "received": [], "opened": []}
    if args.capture_dump:
        record_plaintext(samples)

    def body() -> int:
        from protocols.mpc.session import build, private_generate

        if args.mispredict:
            spoil_predictions()
        party = runtime.init(args.dealer, args.timeout)
        if args.check_selection:
            return check_selection(party, args.out)
        if args.check_mul_hi:
            return check_mul_hi(party, args.out, args.check_mul_hi)
        if args.check_openings:
            return check_openings(party, args.out)
        if args.check_topk:
            return check_topk(party, args.out, args.check_topk.split(","), args.approx)
        from mpcache.core.approximations import Approximations

        view = record_view(party) if args.record_view else None
        pm = build(party, args.model, Approximations.preset(args.approx), debug_logits=True)
        if args.hang_after_setup and party.is_server:
            import time

            time.sleep(3600)
        if args.prompt_len:
            ids = seeded_prompt(args.prompt_len, pm.model.config.vocab_size)
        else:
            ids = pm.model.tokenizer.encode(args.prompt)
        ids = ids if party.is_client else None
        logits = []

        def on_token(token, cost):  # None where the token did not come from the MPC (plaintext prefill)
            if party.is_client:
                last = pm.backend.last_logits
                logits.append(None if last is None else last.tolist())
                pm.backend.last_logits = None

        from mpcache.policies import parse_spec

        runs = []
        for item in args.policy.split(","):  # NAME[:KEY=VALUE...][@BUDGET], one run each
            spec, _, budget = item.partition("@")
            policy = parse_spec(spec, float(budget) if budget else args.budget)
            logits.clear()
            pm.backend.debug_selections.clear()
            run = private_generate(pm, ids, args.new_tokens, on_token, policy=policy, prefill=args.prefill)
            phases = {}
            for step in run.steps:
                for name, cost in step.items():
                    phases[name] = phases.get(name, 0) + cost.online_bytes
            cache = run.result.cache
            runs.append({"policy": item, "tokens": run.result.new_ids, "logits": list(logits),
                         "cache_lengths": [lc.length for lc in cache.layers],
                         "mean_attended": cache.mean_attended(), "phase_bytes": phases,
                         "selections": [s.tolist() for s in pm.backend.debug_selections]})
        if party.is_client:
            Path(args.out).write_text(json.dumps({"prompt_ids": ids, **runs[0], "runs": runs}))
        elif args.dealer == "ttp":  # party 0's figures of the dealer (requests ahead, synchronous)
            Path(f"{args.out}.dealer.json").write_text(json.dumps(ahead.stats()))
        if args.capture_dump:
            from protocols.ring import csprng

            keys = [k.hex() for k in (csprng._keys.pair, csprng._keys.dealer) if k is not None]
            Path(f"{args.out}.rank{party.rank}.json").write_text(json.dumps({**samples, "keys": keys}))
        if view is not None:
            import torch

            torch.save(view, f"{args.record_view}.{party.rank}")
        return 0

    return runtime.run_party(body)


def record_plaintext(samples: dict, limit: int = 4000) -> None:
    """Keep the first 32 bytes of each message this party sends and receives on its links (direct
    and dealer) and of each opened sum: what a capture of the wire must not contain."""
    import torch

    from protocols.net import fastcomm, tlsio

    exchange = tlsio.SecureSocket.exchange

    def recorded(self, out, into, deadline=None):
        exchange(self, out, into, deadline)
        for name, data in (("sent", out), ("received", into)):
            data = bytes(memoryview(data).cast("B")[:32])
            if len(data) == 32 and len(samples[name]) < limit and any(data):
                samples[name].append(data.hex())

    link_exchange = fastcomm.Link.exchange

    def opened(self, mine):
        theirs = link_exchange(self, mine)
        if mine.dtype == torch.long and mine.numel() >= 4 and len(samples["opened"]) < limit:
            total = (mine.reshape(-1)[:4] + theirs.reshape(-1)[:4]).numpy().tobytes()
            if any(total):
                samples["opened"].append(total.hex())
        return theirs

    tlsio.SecureSocket.exchange = recorded
    fastcomm.Link.exchange = opened


def record_view(party) -> list:
    """Test-only (tests/test_attack_randomness.py): from now on, record this party's view in order:
    ("open", value) for every opened tensor, ("dealer", method, shares) for every share the dealer
    gave it. Installs the direct openings first (idempotent) so the recorder wraps them."""
    import torch
    from crypten.communicator.distributed_communicator import DistributedCommunicator

    from protocols.net import fastcrypten
    from protocols.ring import dealer

    events: list = []
    fastcrypten.install(party.timeout_s)
    opened = DistributedCommunicator.all_reduce

    def all_reduce(self, input, *args, **kwargs):
        out = opened(self, input, *args, **kwargs)
        for t in out if isinstance(out, list) else [out]:
            events.append(("open", t.clone()))
        return out

    DistributedCommunicator.all_reduce = all_reduce
    def recorded(name: str, original):
        def method(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            flat = []
            for x in out if isinstance(out, tuple) else (out,):
                flat += x if isinstance(x, list) else [x]
            events.append(("dealer", name, [x.clone() for x in flat if torch.is_tensor(x)]))
            return out

        return method

    for cls in (dealer.LocalDealer, dealer.TTPDealer):
        for name in ("new_mask", "extend_mask", "derive", "triple"):
            setattr(cls, name, recorded(name, getattr(cls, name)))
    return events


def spoil_predictions() -> None:
    """Both parties (same guesses): in each step's guesses from the previous steps, the first
    dealer request with a shape gets a wrong one, and the first mask mutation a wrong key, so the
    real requests miss them: the schedule must fall back to synchronous requests and stay exact."""
    original = ahead.predict

    def spoiled(history):
        guesses = [dict(h) for h in original(history)]
        for h in guesses:
            if h["function"] == "fixed_triple":
                h["args"] = [*h["args"][:2], {"t": [7, 7, 7]}, *h["args"][3:]]
                break
        for h in guesses:
            if h["function"] in ahead.MUTATIONS:
                h["args"] = [10**6, *h["args"][1:]]
                break
        return guesses

    ahead.predict = spoiled


def seeded_prompt(length: int, vocab: int) -> list[int]:
    import torch

    return torch.randint(0, min(vocab, 256), (length,), generator=torch.Generator().manual_seed(3)).tolist()


def check_selection(party, out: str) -> int:
    """topk (secret one-hot) and gather (one-hot matmul) on seeded inputs; the client writes them."""
    import torch

    from protocols.mpc.backend import MPCBackend
    from protocols.ring.shares import reveal

    backend = MPCBackend(party)
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 9, generator=gen)
    values = torch.randn(2, 9, 3, generator=gen)
    crypten = backend.crypten
    selection = backend.topk(crypten.cryptensor(scores, src=0), 3)
    gathered = backend.gather(selection, crypten.cryptensor(values, src=0))
    onehot, rows = reveal(selection), reveal(gathered)
    if party.is_client:
        Path(out).write_text(json.dumps({"scores": scores.tolist(), "values": values.tolist(),
                                         "onehot": onehot.tolist(), "gathered": rows.tolist()}))
    return 0


def topk_cases() -> list[dict]:
    """Scores [H, n], k and forced masks: random, tied (few distinct values), all equal, forced
    items per row and shared, as many forced as k, k = n, k = n - 1, scores beyond the bisection's
    bound."""
    import torch

    gen = torch.Generator().manual_seed(3)
    ties = torch.randint(0, 3, (2, 12), generator=gen).float() * 0.5
    forced_rows = torch.zeros(2, 10, dtype=torch.bool)
    forced_rows[0, 0], forced_rows[1, [2, 9]] = True, True
    spread = torch.randn(2, 10, generator=gen) * 100
    return [
        {"scores": torch.randn(2, 9, generator=gen), "k": 3, "forced": None},
        {"scores": ties, "k": 5, "forced": torch.tensor([i in (0, 11) for i in range(12)])},
        {"scores": torch.randint(-2, 2, (2, 10), generator=gen).float(), "k": 4, "forced": forced_rows},
        {"scores": torch.full((1, 8), 0.25), "k": 3, "forced": None},
        {"scores": spread, "k": 9, "forced": None},
        {"scores": torch.randn(1, 5, generator=gen), "k": 2, "forced": torch.tensor([0, 1, 0, 1, 0]) > 0},
        {"scores": torch.randn(1, 4, generator=gen), "k": 4, "forced": None},
        # beyond bisection's bound 2^12 (clamped there, the set is still the plaintext one)
        {"scores": torch.tensor([[5000.0, 0.5, 9000.0, -7000.0, 1.0, 0.25]]), "k": 3, "forced": None},
        # at (32767.5 - -32768: just inside) and past the bounded comparison's |difference| < 2^16:
        # clamped to |s| <= 2^15 the set is still the plaintext one (ties at the clamp: lower index)
        {"scores": torch.tensor([[40000.0, -40000.0, 0.0, 20000.0, -20000.0, 1.0, 32767.5, -32768.0],
                                 [50000.0, 40000.0, -50000.0, 0.0, 3.0, -3.0, 7.0, 2.0]]), "k": 3,
         "forced": None},
        # unclamped, every pair here would rank 1 (a cycle: 0 items kept for k = 1, all 3 for k = 2)
        {"scores": torch.tensor([[40000.0, -40000.0, 0.0]]), "k": 1, "forced": None},
        {"scores": torch.tensor([[40000.0, -40000.0, 0.0]]), "k": 2, "forced": None},
    ]


def check_topk(party, out: str, methods: list[str], approx: str = "v1") -> int:
    """Every construction on every case of ``topk_cases``; the client writes the revealed one-hots.
    With a fast preset the comparisons are the dealer's exact ring comparisons."""
    from mpcache.core.approximations import Approximations
    from protocols.mpc.backend import MPCBackend
    from protocols.ring.shares import reveal

    backend = MPCBackend(party, Approximations.preset(approx))
    # These cases include scores past the bounded comparison's range: check the clamp's semantics
    # (the default range check would stop the run at the guard instead; tests/test_mpc_default.py).
    backend.selection_range = "clamp"
    crypten = backend.crypten
    record = {"cases": [], "onehots": {}}
    for case in topk_cases():
        record["cases"].append({"scores": case["scores"].tolist(), "k": case["k"],
                                "forced": None if case["forced"] is None else case["forced"].tolist()})
    for method in methods:
        got = []
        for case in topk_cases():
            scores = crypten.cryptensor(case["scores"], src=0)
            got.append(reveal(backend.topk(scores, case["k"], case["forced"], method=method)).tolist())
        record["onehots"][method] = got
    from protocols.numerics.topk import TopkConfig

    backend.topk_config = TopkConfig(compare="ring")  # the keys over the whole ring (bounded: default)
    ring = [backend.topk(crypten.cryptensor(c["scores"], src=0), c["k"], c["forced"], method="allpairs")
            for c in topk_cases()]
    record["ring_allpairs"] = [reveal(onehot).tolist() for onehot in ring]
    backend.topk_config = TopkConfig()
    record["maxima"] = []
    for x in maxima_cases():  # binary (rows of 9) and grouped (rows of 128) tournaments
        secret = crypten.cryptensor(x, src=0)
        record["maxima"].append({"x": x.tolist(), "amax": reveal(backend.amax(secret, -1)).tolist(),
                                 "argmin": reveal(backend.argmin(secret)).tolist()})
    if party.is_client:
        Path(out).write_text(json.dumps(record))
    return 0


def maxima_cases() -> list:
    """Rows with ties (first index must win the argmin), differences near the bounded comparison's
    2^16 and of one unit (2^-16), values past it (clamped to |x| < 2^15: ties, the lower index)."""
    import torch

    gen = torch.Generator().manual_seed(5)
    ties = torch.randint(-2, 3, (3, 9), generator=gen).float()
    near = torch.tensor([[30000.0, -30000.0, 29999.5, -29999.0, 0.0, 2**-16, -(2**-16), 32000.0, -32000.0]])
    wide = torch.randint(-4, 4, (9, 128), generator=gen).float() * 0.25
    wide[0, [3, 77]] = -9.0  # a tied minimum: the lower index wins
    past = torch.tensor([[3.0, 40000.0, -40000.0, 0.0, 32767.5, -32767.5, 1.0, -50000.0, 2.0]])
    wide_past = wide[:2].clone()  # grouped tournament past the bound (clamped: ties, lower index)
    wide_past[0, [5, 60, 100]] = torch.tensor([-50000.0, 45000.0, -40000.0])
    wide_past[1, [1, 2]] = torch.tensor([70000.0, -32767.5])
    return [ties, near, wide, past, wide_past]


def check_mul_hi(party, out: str, elements: int) -> int:
    """x * h by ``nonlinear.mul_hi`` (h at 16 + HI_BITS bits, one per row) on ``elements`` entries with
    |x h| in [4, 32] (RMSNorm outputs of SmolLM2 reach ~24) and h over the range reductions' levels.
    A wrapped local truncation is off by >= 2^24; the client writes the largest error."""
    import torch

    from protocols.mpc.backend import MPCBackend
    from protocols.numerics import nonlinear as nl
    from protocols.ring.shares import reveal

    crypten = MPCBackend(party).crypten
    gen = torch.Generator().manual_seed(1)
    cols, chunk, worst = 256, 1 << 20, 0.0
    for start in range(0, elements, chunk):
        rows = min(chunk, elements - start) // cols
        h = 2.0 ** torch.randint(-6, 9, (rows, 1), generator=gen) * (1 + torch.rand(rows, 1, generator=gen))
        sign = torch.randint(0, 2, (rows, cols), generator=gen) * 2 - 1
        x = crypten.cryptensor((4 + 28 * torch.rand(rows, cols, generator=gen)) * sign / h, src=0)
        hs = crypten.cryptensor(h, src=0, precision=16 + nl.HI_BITS)
        got = reveal(nl.mul_hi(x, hs._tensor.share, 16 + nl.HI_BITS)).double()
        exact = reveal(x).double() * (hs._tensor.reveal().double() / 2.0 ** (16 + nl.HI_BITS))
        worst = max(worst, (got - exact).abs().max().item())
    if party.is_client:
        Path(out).write_text(json.dumps({"elements": elements, "max_error": worst}))
    return 0


def check_openings(party, out: str) -> int:
    """Openings (single, batched, empty, non-contiguous, wrapping int64 sums) through the patched
    ``all_reduce`` (protocols.net.fastcomm) and through CrypTen's original; the counted rounds and bytes
    of each. The client writes the results."""
    import torch
    from crypten.communicator.distributed_communicator import DistributedCommunicator

    from protocols.mpc.backend import MPCBackend

    backend = MPCBackend(party)  # the exchange over the TLS link (runtime.init installed it)
    comm, gen = backend.comm, torch.Generator().manual_seed(party.rank)
    big = torch.randint(-2**63, 2**63 - 1, (300, 7), generator=gen)
    cases = [(big, False), (big.t(), False), (torch.zeros(0, dtype=torch.long), False),
             ([big[:5], torch.full((2, 3), 2**62, dtype=torch.long), big[0, 0]], True),
             (torch.randint(-2**63, 2**63 - 1, (40000,), generator=gen), False)]  # > 4 TLS records
    from protocols.net import fastcomm

    record = {"linked": fastcomm.linked()}
    for name, fn in (("exchange", DistributedCommunicator.all_reduce),
                     ("allreduce", DistributedCommunicator._mpcache_originals["all_reduce"])):
        before = (comm.comm_rounds, comm.comm_bytes)
        results = [fn(comm, x, batched=batched) for x, batched in cases]
        flat = [r if isinstance(r, list) else [r] for r in results]
        record[name] = {"values": [[t.tolist() for t in rs] for rs in flat],
                        "shapes": [[list(t.shape) for t in rs] for rs in flat],
                        "counted": [comm.comm_rounds - before[0], comm.comm_bytes - before[1]]}
    if party.is_client:
        Path(out).write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
