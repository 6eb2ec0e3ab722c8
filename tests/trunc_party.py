"""One party of the two-party truncation test (tests/test_truncation.py, under torchrun).

Shares of known ring values x are split so that they straddle the ring's wrap (s0 + s1 = x +- 2^64
as integers); each is truncated by 2^16 locally (the old way), by ``protocols.ring.trunc`` and by
CrypTen's (patched) ``div_``. Also random splits of x = 2^60, where the old way fails with
probability 2^60 / 2^64 = 1/16 per element. The client writes the errors (ring units) to --out.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols.net import runtime  # noqa: E402

VALUES = [2**61, -(2**61), 3 * 2**40, -(2**45), 12345, -1, 0, 2**61 - 1]
BITS = 16
RANDOM_ELEMENTS = 20000


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dealer", default="tfp")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    def body() -> int:
        import torch

        from protocols.mpc.backend import MPCBackend
        from protocols.ring import trunc
        from protocols.ring.shares import from_share, open_ring

        party = runtime.init(args.dealer, 60)
        backend = MPCBackend(party)  # installs the exact truncation with this run's dealer
        x = torch.tensor(VALUES, dtype=torch.int64)
        # s1 at the far side of the ring from x: s0 = x - s1 then wraps (for x != 0 near the edge).
        s1 = torch.where(x >= 0, torch.full_like(x, -(2**63) + 7), torch.full_like(x, 2**63 - 7))
        share = x - s1 if party.rank == 0 else s1
        expected = torch.div(x, 1 << BITS, rounding_mode="floor")
        old = open_ring(share.div(1 << BITS, rounding_mode="trunc")) - expected
        new = open_ring(trunc.divide([(share, 1 << BITS)])[0]) - expected
        inner = from_share(share.clone(), BITS)._tensor
        crypten_div = open_ring(inner.div_(1 << BITS).share) - expected
        # random splits of 2^60 (a fresh uniform s1 each)
        big = torch.full((RANDOM_ELEMENTS,), 2**60, dtype=torch.int64)
        s1r = torch.randint(-(2**63), 2**63 - 1, big.shape, generator=torch.Generator().manual_seed(5))
        shr = big - s1r if party.rank == 0 else s1r
        want = big >> BITS
        old_r = (open_ring(shr.div(1 << BITS, rounding_mode="trunc")) - want).abs()
        new_r = (open_ring(trunc.divide([(shr, 1 << BITS)])[0]) - want).abs()
        guard = check_guard(backend, party.rank)
        if party.is_client:
            Path(args.out).write_text(json.dumps({"guard": guard,
                "values": VALUES, "old_error": old.tolist(), "new_error": new.tolist(),
                "crypten_div_error": crypten_div.tolist(),
                "random_old_failures": int((old_r > 1).sum()), "random_new_max_error": int(new_r.max()),
                "random_elements": RANDOM_ELEMENTS}))
        return 0

    return runtime.run_party(body)


def check_guard(backend, rank: int) -> list[str]:
    """The guard on a plausible hidden state (passes) and on one whose element wrapped by 2^32 in
    value (stops with one line). Returns what each raised ("" for nothing)."""
    import torch

    from protocols.numerics.guard import OutOfRange

    said = []
    hidden = backend.crypten.cryptensor(torch.tensor([[1.5, -2.2e4, 3.0], [0.5, 7.0, -1.0]]), src=0)
    for corrupt in (False, True):
        if corrupt and rank == 0:
            hidden._tensor.share[-1, 1] += 2**48  # a wrapped local truncation: 2^32 in value
        backend.guard.hidden(hidden)
        try:
            backend.guard.verify()
            said.append("")
        except OutOfRange as e:
            said.append(str(e))
    return said


if __name__ == "__main__":
    sys.exit(main())
