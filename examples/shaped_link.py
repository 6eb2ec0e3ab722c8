"""Check the network model (compute_s + bytes / bandwidth + rounds * RTT) against a real link.

Runs `mpcache bench mpc` three times: on plain loopback, then inside a user + network namespace
(`unshare -rn`) whose loopback is shaped by a token bucket (`tc qdisc ... tbf`) to each rate.
Both parties talk over that loopback, so every byte of both directions passes the one bucket,
which matches `online_bytes` (all traffic between the parties). The estimate for a shaped run is
the unshaped run's compute_s + online_bytes * 8 / rate (tbf adds no delay of its own: RTT ~ 0).
If the kernel refuses the namespace or the qdisc, it says so and exits 0.

    python examples/shaped_link.py [--model random:small] [--length 32] [--rates 1gbit,100mbit]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpcache.core.approximations import MPC_DEFAULT  # noqa: E402

RATE_BITS = {"gbit": 1e9, "mbit": 1e6}


def rate_bits(rate: str) -> float:
    for unit, scale in RATE_BITS.items():
        if rate.endswith(unit):
            return float(rate[: -len(unit)]) * scale
    raise SystemExit(f"rate {rate!r}: use NNmbit or NNgbit")


def bench(args, out: Path, rate: str | None) -> dict:
    if args.op:  # one operator of `mpcache bench ops`: many bytes, few rounds, little compute
        cmd = [sys.executable, "-m", "mpcache", "bench", "ops", "--model", args.model, "--impl",
               args.approx, "--ops", args.op, "--json", str(out)]
    else:
        cmd = [sys.executable, "-m", "mpcache", "bench", "mpc", "--model", args.model, "--length",
               str(args.length), "--new-tokens", "3", "--mask-reuse", args.mask_reuse, "--approx",
               args.approx, "--json", str(out)]
    if rate is not None:
        shape = (f"ip link set lo up && tc qdisc add dev lo root tbf rate {rate} burst 512kb "
                 f"latency 400ms && exec \"$@\"")
        cmd = ["unshare", "-rn", "sh", "-c", shape, "sh", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    rec = json.loads(out.read_text().splitlines()[-1])
    if args.op:
        return {"decode_per_token": {"compute_s": rec["seconds"], "online_bytes": rec["online_bytes"],
                                     "rounds": rec["rounds"]}}
    return rec


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:small")
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--mask-reuse", default="off", help="off: plain Beaver, many bytes (a visible term)")
    p.add_argument("--approx", default=MPC_DEFAULT)
    p.add_argument("--rates", default="1gbit,100mbit")
    p.add_argument("--op", help="time one `bench ops` operator instead (e.g. compare1e5 with "
                   "--approx crypten: 43 MB in 8 rounds), a bandwidth-bound check")
    p.add_argument("--json", help="append one record per rate")
    args = p.parse_args()
    if not (shutil.which("unshare") and shutil.which("tc")):
        print("skipped: unshare or tc not found")
        return 0
    probe = subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up && tc qdisc add dev lo "
                            "root tbf rate 1gbit burst 512kb latency 400ms"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"skipped: the kernel refused a shaped loopback in a user namespace ({probe.stderr.strip()})")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        base = bench(args, Path(tmp) / "base.jsonl", None)["decode_per_token"]
        rows = [("loopback", base["compute_s"], base["compute_s"], base)]
        for rate in args.rates.split(","):
            rec = bench(args, Path(tmp) / f"{rate}.jsonl", rate)["decode_per_token"]
            estimate = base["compute_s"] + rec["online_bytes"] * 8 / rate_bits(rate)
            rows.append((rate, rec["compute_s"], estimate, rec))
    what = f"bench ops {args.op} ({args.approx})" if args.op else (
        f"L={args.length}, mask reuse {args.mask_reuse}, per decode token")
    print(f"{args.model}, {what}:")
    print("| link | MB | rounds | measured s | estimate s (loopback compute + bytes/rate) |")
    print("|---|---|---|---|---|")
    for name, measured, estimate, rec in rows:
        mb = rec["online_bytes"] / 1e6
        print(f"| {name} | {mb:.1f} | {rec['rounds']:.0f} | {measured:.2f} | {estimate:.2f} |")
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"kind": "link", "link": name, "measured_s": measured,
                                    "estimate_s": estimate, **{k: rec[k] for k in ("online_bytes", "rounds")},
                                    "model": args.model, "length": args.length}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
