"""The MPC backend's cached fixed operands (weights, cached keys/values, selections) masked once,
found again by the storage of their share; and the dealer's traffic counted apart."""

from __future__ import annotations

from collections import OrderedDict

import torch
from crypten.mpc.provider.ttp_provider import TTPClient

from protocols.net.accounting import Meter
from protocols.ring.fixed import FixedOperand


class OperandRegistry:
    """Fixed operands by the storage of their share (LRU of ``slots``; strong refs keep a storage
    alive, so an address is never reused while registered). Evicted masks are forgotten by the
    dealer."""

    def __init__(self, dealer, slots: int) -> None:
        self.dealer, self.slots = dealer, slots
        self._entries: OrderedDict[tuple, tuple[torch.Tensor, FixedOperand]] = OrderedDict()

    @staticmethod
    def _key(b) -> tuple:
        share = b._tensor.share
        return share.data_ptr(), tuple(share.shape), tuple(share.stride())

    def register(self, b, fixed: FixedOperand) -> None:
        # The share is made contiguous (same values) so that views of b map onto the mask by strides.
        b._tensor.share = b._tensor.share.contiguous()
        self._entries[self._key(b)] = (b._tensor.share, fixed)
        while len(self._entries) > self.slots:
            _, (_, old) = self._entries.popitem(last=False)
            self.dealer.forget(old.key)

    def unregister(self, b) -> None:
        self._entries.pop(self._key(b), None)

    def lookup(self, b) -> FixedOperand | None:
        key = self._key(b)
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key][1]

    def lookup_view(self, x) -> FixedOperand | None:
        """The fixed operand of which x is a view (same storage, inside it), seen through that view."""
        exact = self.lookup(x)
        if exact is not None:
            return exact
        share = x._tensor.share
        storage = share.untyped_storage().data_ptr()
        for base, fixed in reversed(self._entries.values()):
            if base.untyped_storage().data_ptr() != storage or fixed.view is not None:
                continue
            offset = share.storage_offset() - base.storage_offset()
            last = offset + sum((n - 1) * st for n, st in zip(share.shape, share.stride(), strict=True))
            if offset >= 0 and last < base.numel() and min(share.stride(), default=1) >= 0:
                return fixed.viewed(share.shape, share.stride(), offset)
        return None


class MeteredDealer:
    """Counts the dealer's traffic apart from the online traffic."""

    def __init__(self, inner, meter: Meter):
        self.inner, self.meter = inner, meter
        self.name = inner.name

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def metered(*args, **kwargs):
            with self.meter.dealer():
                return method(*args, **kwargs)

        return metered


def meter_ttp_requests(meter: Meter) -> None:
    """CrypTen's own TTP requests (triples for its multiplications and comparisons) are dealer
    traffic too."""
    client = TTPClient.get()
    request = getattr(client, "_unmetered_request", client.ttp_request)

    def metered(*args, **kwargs):
        with meter.dealer():
            return request(*args, **kwargs)

    client._unmetered_request = request
    client.ttp_request = metered
