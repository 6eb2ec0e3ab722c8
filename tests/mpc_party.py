"""One party of the two-party test run (started by tests/test_mpc_two_party.py via torchrun).

The client writes its tokens and the logits it was shown (debug reveal) to --out as JSON.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols import runtime  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="random:tiny")
    p.add_argument("--dealer", default="tfp")
    p.add_argument("--prompt", default="Hello MPC world")
    p.add_argument("--new-tokens", type=int, default=4)
    p.add_argument("--approx", default="v1", help="approximation preset (mpcache.backend.PRESETS)")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--hang-after-setup", action="store_true", help="fault test: sleep forever")
    p.add_argument("--check-selection", action="store_true", help="run topk + gather on fixed inputs")
    p.add_argument("--check-mul-hi", type=int, default=0, metavar="N",
                   help="run nonlinear.mul_hi on N elements of random sizes, write the max error")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    def body() -> int:
        from protocols.session import build, private_generate

        party = runtime.init(args.dealer, args.timeout)
        if args.check_selection:
            return check_selection(party, args.out)
        if args.check_mul_hi:
            return check_mul_hi(party, args.out, args.check_mul_hi)
        from mpcache.backend import Approximations

        pm = build(party, args.model, Approximations.preset(args.approx), debug_logits=True)
        if args.hang_after_setup and party.is_server:
            import time

            time.sleep(3600)
        ids = pm.model.tokenizer.encode(args.prompt) if party.is_client else None
        logits = []

        def on_token(token, cost):
            if party.is_client:
                logits.append(pm.backend.last_logits.tolist())

        run = private_generate(pm, ids, args.new_tokens, on_token)
        if party.is_client:
            Path(args.out).write_text(json.dumps(
                {"prompt_ids": ids, "tokens": run.result.new_ids, "logits": logits}
            ))
        return 0

    return runtime.run_party(body)


def check_selection(party, out: str) -> int:
    """topk (secret one-hot) and gather (one-hot matmul) on seeded inputs; the client writes them."""
    import torch

    from protocols.backend import MPCBackend, reveal

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


def check_mul_hi(party, out: str, elements: int) -> int:
    """x * h by ``nonlinear.mul_hi`` (h at 16 + HI_BITS bits, one per row) on ``elements`` entries with
    |x h| in [4, 32] (RMSNorm outputs of SmolLM2 reach ~24) and h over the range reductions' levels.
    A wrapped local truncation is off by >= 2^24; the client writes the largest error."""
    import torch

    from protocols import nonlinear as nl
    from protocols.backend import MPCBackend, reveal

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


if __name__ == "__main__":
    sys.exit(main())
