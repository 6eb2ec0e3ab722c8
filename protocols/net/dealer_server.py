"""The TTP dealer process: CrypTen's TTP server plus our requests (fixed masks, comparison
tables, truncation material), served over the dealer's TLS links (``dealerlink``)."""

from __future__ import annotations

import torch
from crypten.mpc.provider.ttp_provider import TTPServer

from protocols.net import dealerlink
from protocols.ring import csprng
from protocols.ring.dealer import apply
from protocols.ring.fixed_masks import FixedMasks
from protocols.ring.ringdiv import material
from protocols.ring.tables import DigitSpec, onehot_tables_minus

MAX_DIGIT_BITS = 16  # a table is 2^bits entries per digit per element: wider is never a real request


def run_ttp_server(on_connected=None, timeout_s: float = 60.0) -> None:
    """Body of the dealer process (rank 2): CrypTen's TTP server plus the fixed-mask requests,
    served over the dealer's TLS links (``protocols.net.dealerlink``; a request is answered by the
    method named like it). ``on_connected`` runs once the parties have connected (before serving);
    ``timeout_s`` bounds their arrival."""
    csprng.install_dealer()  # CrypTen's draws (_get_additive_PRSS) from the per-party streams

    class FixedMaskServer(TTPServer):
        masks = FixedMasks()

        def fixed_new(self, key, shape):
            self.masks.set(key, self._get_additive_PRSS(shape))
            return torch.zeros(1, dtype=torch.long)

        def fixed_extend(self, key, shape, dim):
            self.masks.extend(key, self._get_additive_PRSS(shape), dim)
            return torch.zeros(1, dtype=torch.long)

        def fixed_derive(self, key, parts, dim):
            pieces = [self.masks.view(p[1], p[2]) if p[0] == "view" else self._get_additive_PRSS(p[1])
                      for p in parts]
            self.masks.set(key, torch.cat(pieces, dim=dim))
            return torch.zeros(1, dtype=torch.long)

        def fixed_forget(self, key):
            self.masks.forget(key)
            return torch.zeros(1, dtype=torch.long)

        def fixed_triple(self, key, kind, a_shape, view=None):
            a = self._get_additive_PRSS(a_shape)
            c = apply(kind, a, *self.masks.operands(key, kind, a_shape, view))
            return c - self._get_additive_PRSS(c.size(), remove_rank=True)

        def cmp_tables(self, shape, digits, digit_bits, with_m):
            """Party 0's shares of the one-hot tables (and m tables) of a fresh r: built in place
            in party 1's shares, drawn at once (its draws are one stream, in the same order)."""
            if not (1 <= digit_bits <= MAX_DIGIT_BITS and 1 <= digits and digits * digit_bits <= 64):
                raise ValueError(f"comparison tables of {digits} digits of {digit_bits} bits (at most "
                                 f"{MAX_DIGIT_BITS}-bit digits, 64 bits in all)")
            spec = DigitSpec(0, digits, digit_bits)
            r = self._get_additive_PRSS(shape)
            n = r.numel() * digits << digit_bits
            total = 2 * n + r.numel() if with_m else n
            return onehot_tables_minus(r, spec, with_m, self._get_additive_PRSS((total,), remove_rank=True))

        def trunc_material(self, shape, spec):
            """Party 0's shares of floor(r / d) and msb(r) (``TTPDealer.div_material``)."""
            shape = tuple(shape)
            d = spec if isinstance(spec, int) else \
                torch.repeat_interleave(torch.tensor(spec[0]), torch.tensor(spec[1])).reshape(shape)
            r = self._get_additive_PRSS(shape)
            parts = material(r, d)
            return torch.cat([(p - self._get_additive_PRSS(p.size(), remove_rank=True)).reshape(-1)
                              for p in parts])

    dealerlink.run(FixedMaskServer, on_connected, timeout_s)  # serves until party 0 sends "terminate"
