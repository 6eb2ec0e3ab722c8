"""Profile the decode steps of a private generation, per party (cProfile), to see where the
seconds per token go (Python/CrypTen overhead, ring matmuls, communication waits, the dealer).

    python examples/profile_decode.py --model random:tiny --length 16 --new-tokens 3 --approx fast
    python examples/profile_decode.py --model smollm2 --length 128 --new-tokens 2 --approx fast

Starts the local parties itself (and the dealer with ``--dealer ttp``, not profiled); the prefill
is not profiled. Writes one pstats file per party (``--out``) and prints the top functions of each
by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols.net import runtime  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="random:tiny")
    p.add_argument("--length", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=3)
    p.add_argument("--approx", default="fast")
    p.add_argument("--dealer", choices=["tfp", "ttp"], default="tfp",
                   help="ttp: a third local process deals (it is not profiled)")
    p.add_argument("--out", default="results/profile")
    p.add_argument("--top", type=int, default=35)
    p.add_argument("--sort", default="tottime")
    return p.parse_args()


def main() -> int:
    args = parse()
    if not runtime.under_torchrun():
        from protocols.net.launch import launch_self

        return launch_self(args.dealer)

    def body() -> int:
        from mpcache.core.approximations import Approximations
        from mpcache.programs.parties.bench_party import synthetic_prompt
        from protocols.mpc.session import build, private_generate

        party = runtime.init(args.dealer, 600)
        pm = build(party, args.model, Approximations.preset(args.approx))
        prompt = synthetic_prompt(args.length, pm.model.config.vocab_size) if party.is_client else None
        prof = cProfile.Profile()
        marks: list[float] = []

        def on_token(token, cost):  # the first token ends the prefill: profile what follows
            marks.append(time.perf_counter())
            if len(marks) == 1:
                prof.enable()

        private_generate(pm, prompt, args.new_tokens, on_token)
        prof.disable()
        per_token = (marks[-1] - marks[0]) / max(len(marks) - 1, 1)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        path = Path(args.out) / f"rank{party.rank}.prof"
        prof.dump_stats(str(path))
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats(args.sort).print_stats(args.top)
        print(f"=== {party.role}: {per_token:.3f} s per decode token (profiled) -> {path}\n"
              f"{text.getvalue()}", flush=True)
        return 0

    return runtime.run_party(body)


if __name__ == "__main__":
    sys.exit(main())
