"""``MPCBackend``: the Backend ops on CrypTen secret shares (two parties).

- Weights are shared by the server (rank 0) and, with mask reuse, masked once (``FixedOperand``):
  every linear layer then opens only its fresh input. Products sharing an input (q/k/v, gate/up)
  share its opening. Cached keys/values are fixed operands too: each step masks and opens only the
  new rows, and attention opens only the query / the probabilities.
- The embedding is a one-hot (built by the client, shared at no traffic cost) times the masked
  table: the opened d = onehot - A is uniformly random, so the server learns nothing of the token.
- Non-linear functions are in ``protocols.nonlinear`` (the twins of ``mpcache.approx``).
- The next token is a tournament argmax carrying a secret index, revealed to the client only.

Every op runs inside a named phase of the accounting ``Meter``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mpcache.backend import Approximations, Backend
from protocols import fastcfg
from protocols import nonlinear as nl
from protocols.accounting import Meter
from protocols.compat import import_crypten
from protocols.dealer import make_dealer
from protocols.fixed import FixedOperand, extend_fixed, fixed_product, make_fixed
from protocols.runtime import CLIENT, Party

PHASE_OF_WEIGHT = {
    "q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "attn-out",
    "gate_proj": "mlp-linear", "up_proj": "mlp-linear", "down_proj": "mlp-linear",
    "embed_tokens": "lm-head", "lm_head": "lm-head",
}


@dataclass
class SecretWeight:
    """A server weight under MPC: masked once (``fixed``) or a plain secret share (``secret``)."""

    name: str
    shape: torch.Size
    fixed: FixedOperand | None = None
    secret: object | None = None  # MPCTensor, without mask reuse

    @property
    def phase(self) -> str:
        for key, phase in PHASE_OF_WEIGHT.items():
            if key in self.name:
                return phase
        return "norm" if "norm" in self.name else "linear"


class MPCBackend(Backend):
    name = "mpc"

    def __init__(self, party: Party, approx: Approximations | None = None, mask_reuse: bool = True,
                 reveal_logits: bool = False, meter: Meter | None = None, cache_slots: int = 256,
                 debug_logits: bool = False):
        self.crypten = import_crypten()
        from crypten import communicator

        self.party = party
        self.rank = party.rank
        self.approx = approx or Approximations(exact=False)
        self.mask_reuse = mask_reuse
        self.reveal_logits = reveal_logits
        self.debug_logits = debug_logits  # tests: also reveal logits to the client, token stays secure
        self.comm = communicator.get()
        self.meter = meter or Meter(self.comm)
        self.dealer = _MeteredDealer(make_dealer(party.dealer, party.rank), self.meter)
        self.numerics = nl.Numerics(self.approx, self.dealer)
        fastcfg.freeze()
        if party.dealer == "ttp":
            _meter_ttp_requests(self.meter)
        # Cached operands masked once, by the storage of their share (LRU; strong refs keep the
        # storage alive, so an address is never reused while registered).
        self._registry: OrderedDict[tuple, tuple[torch.Tensor, FixedOperand]] = OrderedDict()
        self._cache_slots = cache_slots
        self.last_logits: torch.Tensor | None = None  # with reveal/debug_logits (client only)

    # --- helpers -----------------------------------------------------------------------------------
    def _share(self, value: torch.Tensor, src: int):
        return self.crypten.cryptensor(value, src=src)

    def _from_ring(self, share: torch.Tensor, truncate_bits: int = 16):
        return nl._mpc_from_share(nl._trunc(share, truncate_bits))

    def _fixed(self, x, fixed: FixedOperand, kind: str):
        return self._from_ring(fixed_product(self.dealer, self.rank, x._tensor.share, fixed, kind))

    # --- data movement -------------------------------------------------------------------------------
    def weight(self, tensor: torch.Tensor, name: str = "") -> SecretWeight:
        with self.meter.phase("setup"):
            value = tensor.float() if self.rank == 0 else torch.zeros(tensor.shape)
            secret = self._share(value, src=0)
            w = SecretWeight(name, tensor.shape)
            if self.mask_reuse:
                w.fixed = make_fixed(self.dealer, secret._tensor.share, name)
            else:
                w.secret = secret
            return w

    def embed(self, token_ids, table: SecretWeight):
        with self.meter.phase("embed"):
            n, vocab = len(token_ids), table.shape[0]
            onehot = torch.zeros(n, vocab)
            if self.rank == CLIENT:
                onehot[torch.arange(n), torch.as_tensor(token_ids, dtype=torch.long)] = 1.0
            x = self._share(onehot, src=CLIENT)  # pseudo-random zero sharing: no traffic
            if table.fixed is not None:
                return self._fixed(x, table.fixed, "matmul")
            return x.matmul(table.secret)

    def cat(self, tensors: Sequence, dim: int):
        tensors = list(tensors)
        with self.meter.phase("kv-append"):
            out = self.crypten.cat(tensors, dim=dim)
            fixed = self._lookup(tensors[0]) if self.mask_reuse and len(tensors) == 2 else None
            if fixed is not None:
                self._unregister(tensors[0])
                self._register(out, extend_fixed(self.dealer, fixed, tensors[1]._tensor.share, dim))
            return out

    # --- linear algebra --------------------------------------------------------------------------------
    def linear(self, x, weight: SecretWeight):
        with self.meter.phase(weight.phase):
            if weight.fixed is not None:
                return self._fixed(x, weight.fixed, "matmul_t")
            return x.matmul(weight.secret.t())

    def matmul(self, a, b):
        with self.meter.phase("attn-values"):
            return self._cached_product(a, b, "matmul")

    def matmul_t(self, a, b):
        with self.meter.phase("attn-scores"):
            return self._cached_product(a, b, "matmul_t")

    def _cached_product(self, a, b, kind: str):
        """a @ b (or a @ b^T): b, typically a cached key/value block, is masked once and reused."""
        if not self.mask_reuse:
            return a.matmul(b.transpose(-1, -2) if kind == "matmul_t" else b)
        fixed = self._lookup(b)
        if fixed is None:
            fixed = make_fixed(self.dealer, b._tensor.share, "kv")
            self._register(b, fixed)
        return self._fixed(a, fixed, kind)

    def mul(self, a, b):
        with self.meter.phase("mlp-gate"):
            return a * b

    # --- non-linear -----------------------------------------------------------------------------------
    def rms_norm(self, x, weight: SecretWeight, eps: float):
        with self.meter.phase("norm"):
            h = nl.rms_norm(x, eps, self.numerics)
            if weight.fixed is not None:
                return self._fixed(h, weight.fixed, "mul")
            return h * weight.secret

    def silu(self, x):
        with self.meter.phase("silu"):
            return nl.silu(x, self.numerics)

    def softmax(self, scores, mask: torch.Tensor | None = None):
        with self.meter.phase("softmax"):
            return nl.softmax(scores, mask, self.numerics)

    def rope(self, x, cos: torch.Tensor, sin: torch.Tensor):
        with self.meter.phase("rope"):
            return super().rope(x, cos, sin)

    # --- selection -------------------------------------------------------------------------------------
    def topk(self, scores, k: int):
        """Secret one-hot [H, k, n] of the k largest entries per row, by k rounds of argmax
        (each picked entry is pushed far below the rest). Rows come in descending score order."""
        with self.meter.phase("selection"):
            n = scores.shape[-1]
            rows = []
            current = scores
            for _ in range(k):
                _, idx = nl.tree_max(current, with_index=True)  # [H, 1]
                onehot = self._index_to_onehot(idx, n)
                rows.append(onehot.unsqueeze(1))
                current = current - onehot * 1e4
            return self.crypten.cat(rows, dim=1)

    def _index_to_onehot(self, idx, n: int):
        """One-hot [H, n] of a secret index [H, 1]: n equality tests (CrypTen's 2PC eq)."""
        diff = idx - torch.arange(n, dtype=torch.float32)
        return diff.eq(0)

    def gather(self, selection, x):
        with self.meter.phase("selection"):
            return selection.matmul(x)

    # --- outputs ---------------------------------------------------------------------------------------
    def next_token(self, logits) -> int:
        """Greedy token, revealed to the client only (-1 on the server)."""
        with self.meter.phase("argmax"):
            last = logits[-1:]
            if self.reveal_logits:
                plain = reveal(last, dst=CLIENT)
                if self.rank == CLIENT:
                    self.last_logits = plain[0]
                    return int(torch.argmax(plain[0]).item())
                return -1
            if self.debug_logits:
                plain = reveal(last, dst=CLIENT)
                self.last_logits = plain[0] if self.rank == CLIENT else None
            _, idx = nl.row_max(last, with_index=True, nm=self.numerics)
            value = reveal(idx, dst=CLIENT)
            return int(round(value.item())) if self.rank == CLIENT else -1

    def agree_stop(self, stop: bool) -> bool:
        with self.meter.phase("argmax"):
            return bool(self.comm.broadcast_obj(bool(stop) if self.rank == CLIENT else None, CLIENT))

    def reveal(self, x) -> torch.Tensor:
        return reveal(x)

    # --- registry of cached fixed operands ----------------------------------------------------------
    @staticmethod
    def _key(b) -> tuple:
        share = b._tensor.share
        return share.data_ptr(), tuple(share.shape), tuple(share.stride())

    def _register(self, b, fixed: FixedOperand) -> None:
        self._registry[self._key(b)] = (b._tensor.share, fixed)
        while len(self._registry) > self._cache_slots:
            _, (_, old) = self._registry.popitem(last=False)
            self.dealer.forget(old.key)

    def _unregister(self, b) -> None:
        self._registry.pop(self._key(b), None)

    def _lookup(self, b) -> FixedOperand | None:
        key = self._key(b)
        if key not in self._registry:
            return None
        self._registry.move_to_end(key)
        return self._registry[key][1]


def reveal(x, dst: int | None = None) -> torch.Tensor | None:
    """Plain value of a secret tensor (to ``dst`` only, or to both). CrypTen 0.4.1's decoder is off by
    one for values just above a negative integer (-77 + 2^-16 decodes to -78), so decode here."""
    ring = x._tensor.reveal(dst=dst)
    if ring is None:
        return None
    return (ring.double() / x._tensor.encoder.scale).float()


class _MeteredDealer:
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


def _meter_ttp_requests(meter: Meter) -> None:
    """CrypTen's own TTP requests (triples for its multiplications and comparisons) are dealer
    traffic too."""
    from crypten.mpc.provider.ttp_provider import TTPClient

    client = TTPClient.get()
    request = getattr(client, "_unmetered_request", client.ttp_request)

    def metered(*args, **kwargs):
        with meter.dealer():
            return request(*args, **kwargs)

    client._unmetered_request = request
    client.ttp_request = metered
