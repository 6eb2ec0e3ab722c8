"""A guard a user can see (issue #24 item 3): values out of any plausible range stop the run with
one line naming the step, instead of decoding nonsense.

Checked per generated token, with exact whole-ring comparisons (``digits.ltz_ring``) so that even a
value that wrapped the ring is caught: the last row of the final hidden state (the residual stream:
a wrapped truncation anywhere in an attention or MLP output lands there; SmolLM2's massive
activations reach ~2.2e4, the bound is 2^20) and the largest logit (bound 2^14). Only the NUMBER of
out-of-range elements is opened (to both parties, so both stop at the same point); it is 0 in every
correct run. Cost per token: 2 + 2 ring comparisons of 2 x 576 and 2 elements, one opening.
"""

from __future__ import annotations

import torch

from mpcache.core.errors import RuntimeFault
from protocols.numerics import digits
from protocols.ring.shares import open_ring

HIDDEN_BOUND = 2.0**20
LOGIT_BOUND = 2.0**14


class OutOfRange(RuntimeFault):
    """A value left its plausible range: the run stops (one line, exit status 3)."""


def out_of_range(share: torch.Tensor, scale: float, bound: float, dealer, rank: int) -> torch.Tensor:
    """Share of the number of elements with |x| > bound (x = share / scale, any ring value)."""
    flat = share.reshape(-1)
    b = int(bound * scale) if rank == 0 else 0
    bits = digits.ltz_ring(torch.cat([b - flat, flat + b]), dealer, rank)  # 1 where x > B or x < -B
    return bits.sum().reshape(1)


class Guard:
    """Collects the checks of one token; ``verify`` opens their count once."""

    def __init__(self, dealer, rank: int):
        self.dealer, self.rank = dealer, rank
        self.token, self.stage = 0, "prefill"
        self.pending: list[tuple[str, torch.Tensor]] = []

    def hidden(self, x) -> None:
        """The final hidden state (last row only: the one the next token depends on)."""
        last = x._tensor.share[..., -1:, :]
        self.pending.append(("final hidden state", out_of_range(last, x._tensor.encoder.scale,
                                                                HIDDEN_BOUND, self.dealer, self.rank)))

    def logit_max(self, top) -> None:
        self.pending.append(("largest logit", out_of_range(top._tensor.share, top._tensor.encoder.scale,
                                                           LOGIT_BOUND, self.dealer, self.rank)))

    def add(self, name: str, count: torch.Tensor) -> None:
        """Another check's share of its out-of-range count (e.g. ``argmax.out_of_range_count``)."""
        self.pending.append((name, count))

    def verify(self) -> None:
        """Open the counts (one round); stop both parties with one line when any is nonzero."""
        if not self.pending:
            return
        names, counts = zip(*self.pending, strict=True)
        self.pending = []
        self.token += 1
        opened = open_ring(torch.cat(counts))
        bad = [f"{name} ({int(n)} values)" for name, n in zip(names, opened.tolist(), strict=True) if n]
        if bad:
            raise OutOfRange(f"stopped at token {self.token} ({self.stage}): {', '.join(bad)} out of any "
                             "plausible range: a wrong result was detected, nothing more is decoded")
