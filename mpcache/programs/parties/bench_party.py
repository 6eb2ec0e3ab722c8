"""The party side of ``mpcache bench mpc``: private generation at given prompt lengths, one JSON
record per (length, mask-reuse) setting, written by rank 0 (the server, whose counts we report)."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mpcache.core.approximations import Approximations, mpc_default
from mpcache.core.backend import PlainBackend
from mpcache.generation.generate import generate
from mpcache.models import Transformer, load_model
from mpcache.policies import parse_spec
from protocols.mpc.plain_prefill import NOTE as PLAINTEXT_NOTE
from protocols.mpc.session import build, private_generate
from protocols.net import ahead, fastcomm, links
from protocols.net.accounting import NETWORKS, Cost, total
from protocols.net.runtime import DEALER_NOTE, Party
from protocols.ring import csprng

BYTES_NOTE = ("online_bytes: party 0's count of elements sent + received x 8 B = all traffic between the "
              "two parties; dealer_bytes: traffic with the dealer (TTP), apart")


def synthetic_prompt(length: int, vocab: int, seed: int = 0) -> list[int]:
    """The client's prompt for cost runs: seeded ids (costs do not depend on the values)."""
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def plaintext_seconds(model_spec: str, length: int, new_tokens: int) -> tuple[float, float]:
    """(prefill s, decode s per token) of exact plaintext generation, same model, same machine."""
    m = load_model(model_spec)
    model = Transformer(m.config, m.weights, PlainBackend())
    result = generate(model, synthetic_prompt(length, m.config.vocab_size), new_tokens)
    steps = max(len(result.new_ids) - 1, 1)
    return result.prefill_seconds, result.decode_seconds / steps


def cost_dict(cost: Cost) -> dict:
    return cost.to_dict(NETWORKS)


def log(party: Party, message: str) -> None:
    if party.is_server:
        print(f"[bench mpc] {message}", file=sys.stderr, flush=True)


def run(party: Party, args) -> int:
    presets = getattr(args, "approx_presets", None) or [mpc_default(args.dealer)]
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.mask_reuse]
    log(party, DEALER_NOTE[party.dealer])
    plain_times: dict[int, tuple[float, float]] = {}
    for mask_reuse, name in [(m, a) for m in modes for a in presets]:
        approx = Approximations.preset(name)  # a backend per preset: its numerics never change
        reuse = 'on' if mask_reuse else 'off'
        log(party, f"setting up {args.model} (mask reuse {reuse}, approximations {name})")
        pm = build(party, args.model, approx, mask_reuse=mask_reuse)
        log(party, f"setup done in {pm.setup.compute_s:.1f} s, {pm.setup.online_bytes / 1e6:.1f} MB")
        if args.prefill == "plaintext":
            log(party, PLAINTEXT_NOTE)
        for length, spec in [(n, p) for n in args.length for p in args.policies]:
            log(party, f"L={length} {spec}, approximations {name}")
            prompt = synthetic_prompt(length, pm.model.config.vocab_size) if party.is_client else None
            policy = parse_spec(spec, args.budget)

            framing = [fastcomm.framing_bytes()]  # TLS bytes beyond the plaintext, after each token
            draws: list[tuple] = []  # this party's (ring elements, draws, seconds) after each token
            dealer = [ahead.stats()]  # the working-ahead dealer's figures, after each token

            def progress(token, step, length=length, spec=spec, draws=draws, framing=framing, dealer=dealer):
                framing.append(fastcomm.framing_bytes())
                dealer.append(ahead.stats())
                draws.append((csprng.Stream.total, csprng.Stream.calls, csprng.Stream.seconds))
                c = total(step)
                log(party, f"L={length} {spec}: token in {c.compute_s:.1f} s, {c.online_bytes / 1e6:.1f} MB, "
                           f"{c.rounds} rounds")

            start = time.perf_counter()
            out = private_generate(pm, prompt, args.new_tokens, progress, policy=policy, prefill=args.prefill)
            record = make_record(party, args, pm, out.steps, length, mask_reuse, approx)
            record.update(link_record(framing))
            record["dealer_ahead"] = ahead_record(dealer)
            record.update(policy=spec, budget=policy.budget, wall_s=time.perf_counter() - start,
                          selected_tokens=out.result.cache.mean_attended(), approx=name)
            if len(draws) > 1:  # the server's own draws (all its streams; MT19937 ones counted alike)
                steps = len(draws) - 1
                record["rng_elements_per_token"] = (draws[-1][0] - draws[0][0]) / steps
                record["rng_draws_per_token"] = (draws[-1][1] - draws[0][1]) / steps
                record["rng_seconds_per_token"] = (draws[-1][2] - draws[0][2]) / steps
            if args.prefill == "plaintext":  # not private anyway: the server records the tokens too
                record["tokens"] = pm.backend.comm.broadcast_obj(
                    out.result.new_ids if party.is_client else None, 1)
            if party.is_server:
                if length not in plain_times:
                    plain_times[length] = plaintext_seconds(args.model, length, args.new_tokens)
                pre_s, tok_s = plain_times[length]
                record["plaintext_prefill_s"], record["plaintext_per_token_s"] = pre_s, tok_s
                d = record["decode_per_token"]
                record["ratios"] = {
                    "compute_vs_plaintext": d["compute_s"] / tok_s,
                    "lan_vs_plaintext": d["lan_s"] / tok_s,
                    "wan_vs_plaintext": d["wan_s"] / tok_s,
                }
                with open(args.json, "a") as f:
                    f.write(json.dumps(record) + "\n")
                st = record["static"]
                log(party, f"L={length} {spec}: {d['online_bytes'] / 1e6:.1f} MB, {d['rounds']:.0f} rounds, "
                           f"{d['compute_s']:.2f} s per token (plaintext {tok_s:.3f} s), "
                           f"{record['selected_tokens']:.0f} keys per layer; static stage once "
                           f"{st['online_bytes'] / 1e6:.1f} MB, {st['rounds']:.0f} rounds -> {args.json}")
        del pm
    return 0


def make_record(party: Party, args, pm, steps, length, mask_reuse, approx) -> dict:
    prefill = total(steps[0])
    static = steps[0].get("static-eviction", Cost())
    decode_steps = steps[1:]
    per_token = Cost()
    phases: dict[str, Cost] = {}
    for step in decode_steps:
        per_token = per_token + total(step)
        for name, cost in step.items():
            phases[name] = phases.get(name, Cost()) + cost
    n = max(len(decode_steps), 1)
    return {
        "kind": "mpc", "model": args.model, "policy": args.policy, "budget": args.budget,
        "length": length, "new_tokens": args.new_tokens, "dealer": party.dealer,
        "mask_reuse": mask_reuse,
        "prefill_mode": args.prefill,
        "prefill": cost_dict(prefill),
        "prefill_phases": {k: cost_dict(v) for k, v in sorted(steps[0].items()) if v.compute_s or v.rounds},
        "static": cost_dict(static),
        "decode_per_token": cost_dict(per_token.scaled(1 / n)),
        "phases": {k: cost_dict(v.scaled(1 / n)) for k, v in sorted(phases.items())
                   if v.compute_s or v.rounds},
        "setup": cost_dict(pm.setup),
        "decode_tokens_measured": len(decode_steps),
        "approximations": asdict(approx),
        "networks": {k: asdict(v) for k, v in NETWORKS.items()},
        "counting": BYTES_NOTE,
        "dealer_note": DEALER_NOTE[party.dealer],
        "private": args.prefill == "mpc",
        "rng": csprng.rng_name(),  # aes-ctr, or insecure-mt19937 (MPCACHE_INSECURE_RNG, bench/test only)
        **({"note": PLAINTEXT_NOTE} if args.prefill == "plaintext" else {}),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def link_record(framing: list[int]) -> dict:
    """How the links ran (TLS or the insecure baseline) and their TLS framing, apart from the
    online bytes (which count plaintext elements only, as CrypTen does)."""
    decode = framing[2:] and (framing[-1] - framing[1]) / (len(framing) - 2)
    return {
        "insecure": links.insecure() or csprng.insecure_rng(),
        "link": "plain sockets (insecure)" if links.insecure() else "TLS 1.3",
        "tls_framing_bytes": {"prefill": framing[1] - framing[0] if len(framing) > 1 else 0,
                              "decode_per_token": decode or 0.0,
                              "note": "TLS record headers, tags and handshakes on this party's links "
                                      "(both directions), not in online_bytes"},
    }


def ahead_record(snapshots: list[dict]) -> dict:
    """Party 0's dealer figures for the prefill and per decode token: requests made ahead vs
    synchronous ones, party 0's wait on the dealer (online) and the dealer's compute (offline)."""
    if len(snapshots) < 2 or not snapshots[0]:
        return {"works_ahead": False}

    def diff(a: dict, b: dict, n: int = 1) -> dict:
        return {k: (a[k] - b[k]) / n for k in a}

    decode = len(snapshots) - 2
    steps = [diff(b, a) for a, b in zip(snapshots[1:-1], snapshots[2:], strict=True)]
    return {"works_ahead": True, "prefill": diff(snapshots[1], snapshots[0]),
            "decode_per_token": diff(snapshots[-1], snapshots[1], decode) if decode else {},
            "decode_tokens": [{k: s[k] for k in ("spec", "sync", "abandons", "wait_s", "dealer_s")}
                              for s in steps]}


def ensure_parent(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
