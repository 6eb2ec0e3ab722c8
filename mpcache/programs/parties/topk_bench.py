"""The party side of ``mpcache bench topk``: every top-k construction at every (n, k), one JSON
record each, written by rank 0 (the server; its count of sent + received bytes is all the traffic).

A construction that would obviously blow up at a size (estimated from a calibration run of the
comparison) is skipped, with the estimate and the reason in its record, instead of hanging.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time

import torch

from mpcache.core.approximations import Approximations
from mpcache.core.backend import PlainBackend
from protocols.mpc.backend import MPCBackend
from protocols.net.accounting import NETWORKS, Cost, diff, total
from protocols.net.runtime import DEALER_NOTE, Party
from protocols.numerics import selectcmp
from protocols.numerics.topk import METHODS, TopkConfig
from protocols.ring.shares import reveal


def default_ks(n: int) -> list[int]:
    """The k the policies use: level-1 clusters (n/2), level-2 (n/5), a small k (8), and for a
    static stage over n tokens 0.3 n kept minus the 0.2 n window (0.1 n)."""
    ks = {max(1, n // 2), max(1, n // 5), min(8, n - 1)}
    if n >= 1024:
        ks.add(round(0.3 * n) - math.ceil(0.2 * n))
    return sorted(ks)


def log(party: Party, message: str) -> None:
    if party.is_server:
        print(f"[bench topk] {message}", file=sys.stderr, flush=True)


def measure(backend: MPCBackend, scores, k: int, method: str) -> tuple[Cost, object]:
    before = backend.meter.snapshot()
    onehot = backend.topk(scores, k, method=method)
    return total(diff(backend.meter.snapshot(), before)), onehot


def calibrate(backend: MPCBackend, heads: int, compare: str | None = None) -> dict:
    """Cost of one layer of 4096 comparisons (the top-k's: CrypTen's ltz, or the dealer's
    comparison of bounded differences or over the ring, ``compare``; default: the backend's):
    bytes per comparison and rounds per layer."""
    x = backend.crypten.cryptensor(torch.randn(heads, 4096), src=0)
    nm = selectcmp.numerics(backend.approx, backend.dealer, compare or backend.topk_config.compare)
    before = backend.meter.snapshot()
    with backend.meter.phase("calibrate"):
        nm.ltz(x)
    c = total(diff(backend.meter.snapshot(), before))
    return {"bytes_per_compare": c.online_bytes / (heads * 4096), "rounds_per_layer": c.rounds}


def estimate(method: str, heads: int, n: int, k: int, cal: dict, radix_bits: int = 1) -> dict:
    """Comparisons and sequential comparison layers of the selection step (compaction apart).
    ``cal``: :func:`calibrate` of the comparison the method uses (all-pairs: bounded differences;
    the others compare ring keys)."""
    log2n = max(1, math.ceil(math.log2(n)))
    if method == "argmax":
        compares, layers = k * (n - 1 + 2 * n), k * (log2n + 1)
    elif method == "allpairs":
        compares, layers = n * (n - 1) // 2 + n, 2
    elif method == "bisect":
        steps = -(-(TopkConfig().value_bits + 16 + log2n + 2) // radix_bits)
        compares, layers = steps * ((1 << radix_bits) - 1) * (n + 1) + n, 2 * steps + 1
    else:
        size = 1 << log2n
        compares, layers = size // 2 * log2n * (log2n + 1) // 2 + n, log2n * (log2n + 1) // 2 + 1
    return {"compares": heads * compares, "layers": layers,
            "online_bytes": heads * compares * cal["bytes_per_compare"],
            "rounds": layers * (cal["rounds_per_layer"] + 1)}


def run(party: Party, args) -> int:
    backend = MPCBackend(party, Approximations.preset(args.approx))
    crypten = backend.crypten
    log(party, DEALER_NOTE[party.dealer])
    cals = {c: calibrate(backend, args.heads, c) for c in selectcmp.COMPARES}
    cal = cals[backend.topk_config.compare]
    log(party, f"one comparison: {cal['bytes_per_compare']:.0f} B, "
               f"{cal['rounds_per_layer']} rounds per layer")
    if party.is_server:
        print(HEADER, flush=True)
    gen = torch.Generator().manual_seed(0)
    methods = args.methods or list(METHODS)
    for n in args.sizes:
        values = torch.randn(args.heads, n, generator=gen)
        scores = crypten.cryptensor(values, src=0)
        for k in args.k or default_ks(n):
            k = min(k, n)
            for method, radix in variants(methods, args.bisect_radix):
                bounded = method == "allpairs" and backend.topk_config.compare == "bounded"
                est = estimate(method, args.heads, n, k, cals["bounded" if bounded else "ring"], radix or 1)
                config = TopkConfig(method, radix_bits=radix or 1)
                record = {"kind": "topk", "n": n, "k": k, "heads": args.heads, "method": method,
                          "label": label(method, radix), "radix_bits": radix, "dealer": party.dealer,
                          "approx": args.approx,
                          "estimate": est, "calibration": cal, "value_bits": config.value_bits,
                          "versions": {"torch": torch.__version__, "python": platform.python_version()},
                          "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                if est["online_bytes"] > args.max_bytes or est["rounds"] > args.max_rounds:
                    record["skipped"] = (f"estimated {est['online_bytes'] / 1e9:.2f} GB, "
                                         f"{est['rounds']:.0f} rounds > limits {args.max_bytes / 1e9:.2f} GB"
                                         f" / {args.max_rounds} rounds")
                else:
                    backend.topk_config = config
                    cost, onehot = measure(backend, scores, k, method)
                    picked = reveal(onehot).round().argmax(-1)
                    record.update(cost.to_dict(NETWORKS))
                    record["correct"] = bool(torch.equal(picked, PlainBackend().topk(values, k)))
                emit(party, args.json, record)
    return 0


def variants(methods: list[str], radixes: list[int]) -> list[tuple[str, int | None]]:
    """(method, bisection radix bits or None): the bisection once per radix."""
    out: list[tuple[str, int | None]] = []
    for m in methods:
        out += [(m, r) for r in radixes] if m == "bisect" else [(m, None)]
    return out


def label(method: str, radix: int | None) -> str:
    return f"{method}/r{radix}" if radix else method


def emit(party: Party, path: str, record: dict) -> None:
    if not party.is_server:
        return
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(row(record), flush=True)


HEADER = f"{'n':>5} {'k':>5} {'method':<10} {'MB':>10} {'rounds':>8} {'compute s':>9} {'lan s':>8} {'ok':>3}"


def row(r: dict) -> str:
    if "skipped" in r:
        return f"{r['n']:>5} {r['k']:>5} {r['label']:<10} skipped: {r['skipped']}"
    return (f"{r['n']:>5} {r['k']:>5} {r['label']:<10} {r['online_bytes'] / 1e6:>10.2f} {r['rounds']:>8.0f} "
            f"{r['compute_s']:>9.2f} {r['lan_s']:>8.2f} {'yes' if r['correct'] else 'NO':>3}")
