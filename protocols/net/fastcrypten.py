"""CrypTen's per-tensor Python overhead, trimmed (same values, same random streams).

Profiled on a two-party SmolLM2 decode step, after communication the largest costs were CrypTen's
bookkeeping around tiny operations, not arithmetic:

- ``MPCTensor([])`` (inside every ``from_shares``, ``clone``, and the dummy behind every
  ``crypten.cat``/``stack``) encodes an empty list and draws a pseudo-random zero sharing of size
  0: two ``torch.randint`` calls and a dozen Python frames for nothing (its ``tensor is []`` test,
  meant to skip that, is always false). An empty draw does not advance a generator, so skipping
  it changes no later random value.
- Every attribute access on a CrypTensor goes through a validation wrapper that reads
  ``cfg.debug.validation_mode``; with validation off (checked once, here) the wrapper is removed.
- ``protocols.ring.shares.from_share`` builds an MPCTensor around an existing share without either
  detour.

``install()`` also installs ``protocols.net.fastcomm`` (two-party openings over a direct connection)
and freezes CrypTen's config (``protocols.net.fastcfg``); it is idempotent.
"""

from __future__ import annotations

import crypten
import torch
from crypten.cryptensor import CrypTensor
from crypten.encoder import FixedPointEncoder
from crypten.mpc import MPCTensor
from crypten.mpc.primitives import ArithmeticSharedTensor
from crypten.mpc.ptype import ptype as Ptype

from protocols.net import fastcfg, fastcomm

_PATCHED = "_mpcache_trimmed"


def install(timeout_s: float = 60.0) -> None:
    """Both parties, at the same point (``MPCBackend``): ``timeout_s`` bounds a silent peer."""
    fastcfg.freeze()
    fastcomm.install(timeout_s)

    if getattr(MPCTensor, _PATCHED, False):
        return
    original_init = MPCTensor.__init__

    def __init__(self, tensor, *args, **kwargs):
        if isinstance(tensor, list) and not tensor and not args and not kwargs:
            CrypTensor.__init__(self, requires_grad=False)
            inner = object.__new__(ArithmeticSharedTensor)  # what the original makes, minus the draws
            inner._tensor = torch.empty(0, dtype=torch.long)
            inner.encoder = FixedPointEncoder()
            self._tensor = inner

            self.ptype = Ptype.arithmetic
            return
        original_init(self, tensor, *args, **kwargs)

    MPCTensor.__init__ = __init__
    getattr_fn = CrypTensor.__dict__["__getattribute__"]
    if not crypten.cfg.debug.validation_mode and hasattr(getattr_fn, "__wrapped__"):
        CrypTensor.__getattribute__ = getattr_fn.__wrapped__
    setattr(MPCTensor, _PATCHED, True)
