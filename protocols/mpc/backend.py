"""``MPCBackend``: the Backend ops on CrypTen secret shares (two parties).

- Weights are shared by the server (rank 0) and, with mask reuse, masked once (``FixedOperand``):
  every linear layer then opens only its fresh input. Products sharing an input (q/k/v, gate/up)
  share its opening. Cached keys/values are fixed operands too: each step masks and opens only the
  new rows, and attention opens only the query / the probabilities.
- The embedding is a one-hot (built by the client, shared at no cost) times the masked table: the
  opened d = onehot - A is uniformly random, so the server learns nothing of the token.
- Non-linear functions are in ``protocols.numerics.nonlinear`` (the twins of ``mpcache.core.approx``).
- The next token is a tournament argmax carrying a secret index, revealed to the client only.
Every op runs inside a named phase of the accounting ``Meter``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import crypten
import torch
from crypten import communicator

from mpcache.core.approximations import Approximations, mpc_default
from mpcache.core.backend import Backend
from mpcache.core.selected import SelectedRows
from protocols.mpc.operands import MeteredDealer, OperandRegistry, meter_ttp_requests
from protocols.net import fastcrypten
from protocols.net.accounting import Meter
from protocols.net.runtime import CLIENT, Party
from protocols.numerics import argmax, layers, selectcmp, topk
from protocols.numerics import nonlinear as nl
from protocols.numerics.guard import Guard
from protocols.numerics.topk import TopkConfig
from protocols.ring import shares, trunc
from protocols.ring.dealer import make_dealer
from protocols.ring.fixed import (
    FixedOperand,
    extend_fixed,
    fix_and_multiply,
    fixed_product,
    make_fixed,
)
from protocols.ring.shares import open_ring, reveal

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
        self.crypten, self.party, self.rank = crypten, party, party.rank
        self.approx = approx or Approximations.preset(mpc_default(party.dealer))
        self.mask_reuse = mask_reuse
        self.reveal_logits = reveal_logits
        self.debug_logits = debug_logits  # tests: also reveal logits to the client, token stays secure
        self.comm = communicator.get()
        self.meter = meter or Meter(self.comm)
        self.dealer = MeteredDealer(make_dealer(party.dealer, party.rank), self.meter)
        self.numerics = nl.Numerics(self.approx, self.dealer)
        trunc.install(self.dealer, self.rank)  # exact truncation everywhere (ours and CrypTen's)
        self.guard = Guard(self.dealer, self.rank)  # range checks per token (protocols/numerics/guard.py)
        # Selections compare exactly (ties and near-ties must match the plaintext): with the fast
        # presets by the dealer's digit comparison (bounded differences: 1 round; see _select_nm),
        # else CrypTen's circuit.
        self._select_dealer = selectcmp.numerics(self.approx, self.dealer).dealer
        fastcrypten.install(party.timeout_s)  # frozen config, direct openings, less per-tensor overhead
        if party.dealer == "ttp":
            meter_ttp_requests(self.meter)
        self.operands = OperandRegistry(self.dealer, cache_slots)  # cached operands, masked once
        self.last_logits: torch.Tensor | None = None  # with reveal/debug_logits (client only)
        # debug_logits (tests only): every selection is also revealed to the client, as indices
        # [H, k], so a test can replay them on the plaintext backend and check each one.
        self.debug_selections: list[torch.Tensor] = []

    # --- helpers -----------------------------------------------------------------------------------
    def _share(self, value: torch.Tensor, src: int):
        return self.crypten.cryptensor(value, src=src)

    def _from_ring(self, share: torch.Tensor, truncate_bits: int = 16):
        return shares.mpc_from_share(trunc.trunc(share, truncate_bits))

    def _fixed(self, x, fixed: FixedOperand, kind: str):
        return self._from_ring(fixed_product(self.dealer, self.rank, x._tensor.share, fixed, kind))

    def share_from_server(self, value: torch.Tensor | None, shape):
        """Secret-share a plaintext tensor the server holds (the client passes None; shapes are
        public). No traffic: pseudo-random zero shares plus the server's value."""
        if self.rank == 0 and tuple(value.shape) != tuple(shape):
            raise RuntimeError(f"server tensor of shape {tuple(value.shape)}, expected {tuple(shape)}")
        plain = value.float().contiguous() if self.rank == 0 else torch.zeros(shape)
        return self._share(plain, src=0)

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
            self.guard.stage = "prefill" if n > 1 else "decode"
            onehot = torch.zeros(n, vocab)
            if self.rank == CLIENT:
                onehot[torch.arange(n), torch.as_tensor(token_ids, dtype=torch.long)] = 1.0
            x = self._share(onehot, src=CLIENT)  # pseudo-random zero sharing: no traffic
            if table.fixed is not None:
                return self._fixed(x, table.fixed, "matmul")
            return x.matmul(table.secret)

    def cat(self, tensors: Sequence, dim: int):
        """Concatenation. When a piece is (a view of) a fixed operand, e.g. a cache growing by a row
        or rebuilt from slices after eviction, the result is fixed too: only fresh pieces are masked
        and opened; the masks of the fixed pieces are reused (the dealer derives the new mask)."""
        tensors = list(tensors)
        with self.meter.phase("kv-append"):
            out = self.crypten.cat(tensors, dim=dim)
            if not self.mask_reuse or any(torch.is_tensor(t) for t in tensors):
                return out
            fixed = [self.operands.lookup_view(t) for t in tensors]
            if len(tensors) == 2 and fixed[0] is not None and fixed[0].view is None and fixed[1] is None:
                self.operands.unregister(tensors[0])  # a growing cache: extend its mask by the new rows
                grown = extend_fixed(self.dealer, fixed[0], tensors[1]._tensor.share, dim)
                self.operands.register(out, grown)
            elif any(f is not None for f in fixed):
                parts = [("view", f.key, f.view) if f is not None else ("new", tuple(t.shape))
                         for t, f in zip(tensors, fixed, strict=True)]
                key, fresh = self.dealer.derive(parts, dim)
                fresh = iter(fresh)
                masks, opened = [], []
                for t, f in zip(tensors, fixed, strict=True):
                    if f is not None:
                        masks.append(f.mask_share)
                        opened.append(f.opened)
                    else:
                        b = next(fresh).contiguous()
                        masks.append(b)
                        opened.append(open_ring(t._tensor.share - b))
                self.operands.register(out, FixedOperand(key, torch.cat(masks, dim).contiguous(),
                                                 torch.cat(opened, dim).contiguous(), "kv"))
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
        fixed = self.operands.lookup_view(b)
        if fixed is None:
            fixed = make_fixed(self.dealer, b._tensor.share, "kv")
            self.operands.register(b, fixed)
        return self._fixed(a, fixed, kind)

    def mul(self, a, b):
        with self.meter.phase("mlp-gate"):
            return a * b

    # --- non-linear -----------------------------------------------------------------------------------
    def rms_norm(self, x, weight: SecretWeight, eps: float):
        with self.meter.phase("norm"):
            if weight.name == "model.norm.weight":  # the residual stream, once per token
                with self.meter.phase("guard"):
                    self.guard.hidden(x)
            h = layers.rms_norm(x, eps, self.numerics)
            if weight.fixed is not None:
                return self._fixed(h, weight.fixed, "mul")
            return h * weight.secret

    def silu(self, x):
        with self.meter.phase("silu"):
            return layers.silu(x, self.numerics)

    def softmax(self, scores, mask: torch.Tensor | None = None, shift=None):
        with self.meter.phase("softmax"):  # the row max: a policy's shift, else a bounded tournament
            find = argmax.softmax_max(self.softmax_max, shift, self.numerics, self.rank, self.guard)
            return layers.softmax(scores, mask, self.numerics, find)

    def rope(self, x, cos: torch.Tensor, sin: torch.Tensor):
        """x cos + rotate_half(x) sin with ONE truncation of the sum (two public products would
        truncate twice, a round each)."""
        with self.meter.phase("rope"):
            s, enc = x._tensor.share, x._tensor.encoder
            half = s.shape[-1] // 2
            rotated = torch.cat([-s[..., half:], s[..., :half]], dim=-1)
            prod = s * enc.encode(cos).long() + rotated * enc.encode(sin).long()
            return shares.mpc_from_share(trunc.trunc(prod, 16))

    # --- selection -------------------------------------------------------------------------------------
    argmax_method = softmax_max = "bounded"  # protocols.numerics.argmax: bounded | row (the old way)
    selection_range = "check"  # amax/top-k bounded comparisons: range counted for the guard | clamp (old)
    topk_config = TopkConfig()  # protocols.numerics.topk.choose by (n, k); assign another to force one method

    @property
    def _select_nm(self):
        """The selections' numerics, with the comparison ``topk_config.compare`` names."""
        return selectcmp.numerics(self.approx, self.dealer, self.topk_config.compare)

    def topk(self, scores, k: int, forced: torch.Tensor | None = None, method: str | None = None):
        """Secret one-hot [H, k, n] of the k largest entries per row, rows in ascending position
        order; equal scores: the lower index wins; public ``forced`` items [n] or [H, n] are always
        kept (inside k). The construction follows ``self.topk_config`` (``protocols.numerics.topk``);
        ``method`` overrides it for one call."""
        with self.meter.phase("selection"):
            config = self.topk_config
            if method is not None:
                config = replace(config, method=method)
            check = argmax.range_checker(self.guard, self._select_dealer, self.rank, self.selection_range)
            return self._debug_selection(topk.select(scores, k, forced, config, self._select_dealer, check))

    def gather(self, selection, x):
        """One-hot [H or 1, k, n] times rows x [H, n, m]. When x is a view of a fixed operand (the
        cache viewed cluster-major), its mask is reused: only the fresh one-hot is opened."""
        with self.meter.phase("selection"):
            fixed = self.operands.lookup_view(x) if self.mask_reuse and not torch.is_tensor(x) else None
            if fixed is not None:
                return self._fixed(selection, fixed, "matmul")
            if self.mask_reuse and not torch.is_tensor(x):
                # (x^T sel^T)^T, masking the one-hot in the same round: its scatter reuses the mask
                rows = x._tensor.share.transpose(-1, -2)
                fixed = self.operands.lookup(selection)
                if fixed is not None:
                    return self._from_ring(fixed_product(self.dealer, self.rank, rows, fixed, "matmul_t")
                                           ).transpose(-1, -2)
                selection._tensor.share = selection._tensor.share.contiguous()
                share = selection._tensor.share
                fixed, out = fix_and_multiply(self.dealer, self.rank, share, rows, "matmul_t")
                self.operands.register(selection, fixed)
                return self._from_ring(out).transpose(-1, -2)
            return selection.matmul(x)

    def select_clusters(self, selection, x, count: int, size: int, picked: int, scores=None, shift=None,
                        outer=None):
        """With x fixed (the cache): rows attended in place through x's mask (``mpcache.core.selected``),
        never opening the picked keys/values (``outer``: level by level); else the gathered rows."""
        if self.mask_reuse and not torch.is_tensor(x) and self.operands.lookup_view(x) is not None:
            return SelectedRows(selection, x, count, size, picked, scores, shift, outer)
        return super().select_clusters(selection, x, count, size, picked, outer=outer)

    def scatter(self, selection, x, n: int):
        """selection^T [H, n, k] times rows x [H, k, m]. With mask reuse the one-hot's mask from its
        gather is reused ((x^T sel)^T): only x is opened; else one Beaver product (opens both)."""
        with self.meter.phase("selection"):
            if self.mask_reuse and not torch.is_tensor(x):
                share = x._tensor.share.transpose(-1, -2)
                out = fixed_product(self.dealer, self.rank, share, self._fixed_selection(selection), "matmul")
                return self._from_ring(out).transpose(-1, -2)
            return selection.transpose(-1, -2).matmul(x)

    def _fixed_selection(self, selection) -> FixedOperand:
        """A one-hot masked once (opens sel - B, as a Beaver product would), so that its products
        with fresh rows (a gather, then the scatter back) open only those rows."""
        return self._mask_once(selection, "selection")

    def _mask_once(self, x, kind: str) -> FixedOperand:
        """x's registered mask, made (one opening of x - B) on first use."""
        fixed = self.operands.lookup(x)
        if fixed is None:
            fixed = make_fixed(self.dealer, x._tensor.share, kind)
            self.operands.register(x, fixed)
        return fixed

    def argmin(self, scores):
        """One-hot [H, 1, n] of each row's minimum (the first one on ties): one tournament."""
        with self.meter.phase("selection"):
            _, idx = selectcmp.exact_max(scores * -1.0, self._select_nm, with_index=True)  # [H, 1]
            one_hot = (idx - torch.arange(scores.shape[-1], dtype=torch.float32)).eq(0).unsqueeze(1)
            return self._debug_selection(one_hot)

    def _debug_selection(self, one_hot):
        """With debug_logits, reveal a selection's indices to the client (tests replay them)."""
        if self.debug_logits:
            with self.meter.debug():  # not counted as selection traffic
                plain = reveal(one_hot, dst=CLIENT)
            if self.rank == CLIENT:
                self.debug_selections.append(plain.argmax(-1))
        return one_hot

    def drop(self, selection, x):
        """x [H, n, m] without the row picked by the one-hot ``selection`` [H, 1, n], order kept:
        row j <- x_j + c_j (x_{j+1} - x_j) with c the prefix sum of the one-hot (a local op). With x
        fixed, both products reuse its mask and open only c."""
        with self.meter.phase("selection"):
            c = selection[:, 0].cumsum(-1)[:, :-1].unsqueeze(-1)  # [H, n-1, 1]
            lo, hi = x[:, :-1], x[:, 1:]
            if self.mask_reuse:
                f_lo, f_hi = self.operands.lookup_view(lo), self.operands.lookup_view(hi)
                if f_lo is not None and f_hi is not None:
                    return lo + self._fixed(c, f_hi, "mul") - self._fixed(c, f_lo, "mul")
            return lo + c * (hi - lo)

    def compose(self, outer, inner, m: int):
        """Children picked by ``inner`` [H, k2, k1*m] among the m children of each of ``outer``'s k1
        picks [H, k1, C] -> one one-hot [H, k2, C*m] over all children (one Beaver matmul per child
        offset u, batched: out[:, i, c*m + u] = sum_p inner[:, i, p*m + u] outer[:, p, c]; it opens
        inner and outer once, not outer expanded by the identity over m, m^2 times larger)."""
        with self.meter.phase("selection"):
            h, k2, _ = inner.shape
            k1, c = outer.shape[-2:]
            by_offset = inner.reshape(h, k2, k1, m).permute(0, 3, 1, 2)  # [H, m, k2, k1]
            prod = by_offset.matmul(outer.unsqueeze(1))  # [H, m, k2, C]
            return prod.permute(0, 2, 3, 1).reshape(h, k2, c * m)

    def fix(self, x):
        """Mask x once (a cache rebuilt by eviction): later products with x or its views open only
        the other operand."""
        if self.mask_reuse and not torch.is_tensor(x):
            self._mask_once(x, "kv")
        return x

    def amax(self, x, dim: int, keepdim: bool = False):
        """Max over ``dim``: a tournament of secret comparisons, every independent max of x in the
        same rounds (``selectcmp.exact_max``)."""
        with self.meter.phase("selection"):
            moved = x.transpose(dim, -1) if dim not in (-1, x.dim() - 1) else x
            out = argmax.selection_max(moved, self._select_nm, self.rank, self.guard, self.selection_range)
            out = out.transpose(dim, -1) if moved is not x else out
            return out if keepdim else out.squeeze(dim)

    def amin(self, x, dim: int, keepdim: bool = False):
        return self.amax(x * -1.0, dim, keepdim) * -1.0

    def phase(self, name: str):
        return self.meter.phase(name, owns_inner=True)

    # --- outputs ---------------------------------------------------------------------------------------

    def next_token(self, logits) -> int:
        """Greedy token, revealed to the client only (-1 on the server)."""
        with self.meter.phase("argmax"), self.dealer.step():  # a working-ahead dealer: a step ends
            last = logits[-1:]
            if self.reveal_logits:
                with self.meter.phase("guard"):
                    self.guard.verify()
                plain = reveal(last, dst=CLIENT)
                if self.rank == CLIENT:
                    self.last_logits = plain[0]
                    return int(torch.argmax(plain[0]).item())
                return -1
            if self.debug_logits:
                plain = reveal(last, dst=CLIENT)
                self.last_logits = plain[0] if self.rank == CLIENT else None
            top, idx = argmax.vocab_argmax(last, self.numerics, self.rank, self.guard, self.argmax_method)
            with self.meter.phase("guard"):
                self.guard.logit_max(top)
                self.guard.verify()  # stops both parties, one line, before any nonsense is revealed
            value = reveal(idx, dst=CLIENT)
            return int(round(value.item())) if self.rank == CLIENT else -1

    def agree_stop(self, stop: bool) -> bool:
        with self.meter.phase("argmax"):
            return bool(self.comm.broadcast_obj(bool(stop) if self.rank == CLIENT else None, CLIENT))

    def reveal(self, x) -> torch.Tensor:
        return reveal(x)


