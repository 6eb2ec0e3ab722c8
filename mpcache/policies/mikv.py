"""MiKV: keep every token, important ones in high precision, the rest quantized (No Token Left Behind).

After prefill, per KV head, an importance policy (H2O: accumulated attention + recent tokens;
SnapKV optional) marks ``budget_tokens(T)`` tokens (the fraction r = budget) as important: they
stay in ``cache.k/v`` as fp16. All other prompt tokens go to a low tier of packed ``bits``-bit
codes, per-token asymmetric round-to-nearest in groups of ``group`` channels (``kernels``). Keys
get a channel balancer from the prompt, b_c = sqrt(max_t|q_tc| / max_t|k_tc|): the low tier
stores quant(k * b) and is scored with q / b, so outlier channels of the keys cost less precision.

``high_bits=8`` stores the high tier as int8 codes too (same layout, groups of ``group`` channels,
no channel balancer: 8 bits keep every channel), dequantized to fp16 before the attention call;
``cache.k/v`` then only hold the newest token until it is absorbed into the tier.

Decode: the new token enters the high tier; when the tier holds more than its budget, the
lowest-scoring token outside the recent window is demoted into the low tier. Attention runs over
both tiers with ONE softmax (``kernels.dispatch.mixed_decode_attention``: Triton on CUDA, the
torch reference on CPU); its log-normaliser gives the exact probabilities of the high tier, which
keep the H2O scores up to date. Plaintext only: the cache holds real torch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.dispatch import dequantize, mixed_decode_attention, quantize
from kernels.quant_ref import SUPPORTED_BITS, QuantizedTensor
from mpcache.core.backend import Backend, Tensor
from mpcache.core.cache import LayerCache
from mpcache.core.errors import UserError
from mpcache.core.policy import Policy, PromptInfo
from mpcache.policies.importance import check_importance, complement, importance_keep

HIGH_DTYPE = torch.float16
HIGH_BITS = (16, 8)  # fp16, or int8 codes


@dataclass(frozen=True)
class MiKVPolicy(Policy):
    bits: int = 4  # low tier: 2, 3, 4 (8 also packs)
    high_bits: int = 16  # high tier: 16 = fp16, 8 = int8 codes
    group: int = 0  # channels per quantization group; 0 = head_dim / 2
    importance: str = "h2o"  # h2o | snapkv
    recent_ratio: float = 0.5  # H2O: share of the high tier reserved for the newest tokens
    window: int = 32  # SnapKV observation window
    balance: bool = True  # key channel balancer

    name = "mikv"
    backends = ("plain",)
    plaintext_only_because = "its low-precision tier is quantized plaintext"

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise UserError(f"mikv bits must be one of {SUPPORTED_BITS}, got {self.bits}")
        if self.high_bits not in HIGH_BITS:
            raise UserError(f"mikv high_bits must be one of {HIGH_BITS}, got {self.high_bits}")
        if self.group < 0:
            raise UserError(f"mikv group must be >= 0, got {self.group}")
        if not 0.0 <= self.recent_ratio <= 1.0:
            raise UserError(f"recent_ratio must be in [0, 1], got {self.recent_ratio}")
        check_importance(self.importance)

    # --- which tokens stay high (KVCrush+MiKV overrides this) -----------------------------------
    def important(self, prompt: PromptInfo, cache: LayerCache, n_high: int, backend: Backend) -> torch.Tensor:
        """Ascending indices [Hkv, n_high] of the prompt tokens kept in high precision."""
        return importance_keep(self.importance, prompt, cache.k, n_high, backend, per_head=True,
                               recent_ratio=self.recent_ratio, window=self.window)

    # --- hooks ------------------------------------------------------------------------------
    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        k, v = cache.k, cache.v
        if self.budget >= 1.0:  # no compression at all: the full cache, untouched (exact)
            return
        hkv, t, d = k.shape
        group = self.group or d // 2
        if d % group:
            raise UserError(f"{self.name}: group {group} must divide head_dim {d}")
        n_high = self.budget_tokens(t)
        st = cache.state
        st.update(n_high=n_high, group=group, k_lo=None, v_lo=None, k_hi=None, v_hi=None, balance=None)
        keep = self.important(prompt, cache, min(t, n_high), backend).expand(hkv, -1)
        scores = prompt.attn_colsum.float()
        st["scores"] = torch.gather(scores, 1, keep)
        if self.balance:
            qmax = prompt.q.reshape(hkv, -1, d).abs().amax(1)  # over the group's heads and tokens
            kmax = k.abs().amax(1).clamp(min=1e-6)
            st["balance"] = torch.sqrt(qmax / kmax).clamp(min=1e-3, max=1e3)
        drop = complement(keep, t)
        if drop.shape[1]:
            self._to_low(cache, _rows(k, drop), _rows(v, drop))
        cache.k, cache.v = _rows(k, keep).to(HIGH_DTYPE), _rows(v, keep).to(HIGH_DTYPE)
        self._absorb(cache)

    def decode_attention(self, layer: int, q: Tensor, cache: LayerCache, backend: Backend):
        st = cache.state
        if not st:  # budget 1: the transformer attends the full cache itself
            return None
        self._absorb(cache)  # the new token (fp32) enters the high tier
        grown = self._high_rows(cache) - st["scores"].shape[1]
        st["scores"] = torch.cat([st["scores"], st["scores"].new_zeros(st["scores"].shape[0], grown)], 1)
        self._demote(cache)
        k_hi, v_hi = self._high(cache)
        hkv, n_high, d = k_hi.shape
        k_lo, v_lo = st["k_lo"], st["v_lo"]
        lo = (k_lo.map(lambda x: x[None]), v_lo.map(lambda x: x[None])) if k_lo is not None else (None, None)
        bal = st["balance"] if k_lo is not None else None
        out, lse = mixed_decode_attention(
            q.transpose(0, 1).to(torch.float32), k_hi[None], v_hi[None], *lo, bal, return_lse=True
        )
        g = q.shape[0] // hkv
        # exact probabilities of the high tier under the joint softmax, for the H2O scores
        qg = q[:, 0].float().reshape(hkv, g, d) * d**-0.5
        probs_high = torch.exp(qg @ k_hi.float().transpose(1, 2) - lse.reshape(hkv, g, 1))
        st["scores"] = st["scores"] + probs_high.sum(1)
        attended = n_high + (k_lo.rows if k_lo is not None else 0)
        return out[0].reshape(hkv, g, d).to(q.dtype), attended

    def extra_nbytes(self, cache: LayerCache) -> int:
        st = cache.state
        total = sum(st[name].nbytes for name in ("k_lo", "v_lo", "k_hi", "v_hi") if st.get(name) is not None)
        if st.get("balance") is not None:
            total += st["balance"].numel() * st["balance"].element_size()
        return total

    # --- tiers --------------------------------------------------------------------------------
    def _absorb(self, cache: LayerCache) -> None:
        """Bring rows in cache.k/v into the high tier's storage format."""
        if self.high_bits == 16:
            cache.k, cache.v = cache.k.to(HIGH_DTYPE), cache.v.to(HIGH_DTYPE)
            return
        st = cache.state
        if cache.length:
            k_q, v_q = quantize(cache.k.float(), 8, st["group"]), quantize(cache.v.float(), 8, st["group"])
            if st["k_hi"] is not None:
                k_q = QuantizedTensor.cat([st["k_hi"], k_q], 1)
                v_q = QuantizedTensor.cat([st["v_hi"], v_q], 1)
            st["k_hi"], st["v_hi"] = k_q, v_q
        cache.k, cache.v = cache.k[:, :0].to(HIGH_DTYPE), cache.v[:, :0].to(HIGH_DTYPE)

    def _high_rows(self, cache: LayerCache) -> int:
        return cache.length if self.high_bits == 16 else cache.state["k_hi"].rows

    def _high(self, cache: LayerCache, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The high tier's keys and values in fp16 (only rows idx [Hkv, m] when given)."""
        if self.high_bits == 16:
            k, v = cache.k, cache.v
            return (k, v) if idx is None else (_rows(k, idx), _rows(v, idx))
        k_q, v_q = cache.state["k_hi"], cache.state["v_hi"]
        if idx is not None:
            k_q, v_q = _qrows(k_q, idx), _qrows(v_q, idx)
        return dequantize(k_q, HIGH_DTYPE), dequantize(v_q, HIGH_DTYPE)

    def _keep_high(self, cache: LayerCache, idx: torch.Tensor) -> None:
        """Restrict the high tier to rows idx [Hkv, m]."""
        if self.high_bits == 16:
            cache.k, cache.v = _rows(cache.k, idx), _rows(cache.v, idx)
        else:
            st = cache.state
            st["k_hi"], st["v_hi"] = _qrows(st["k_hi"], idx), _qrows(st["v_hi"], idx)

    def _to_low(self, cache: LayerCache, k: torch.Tensor, v: torch.Tensor) -> None:
        """Quantize [Hkv, m, d] keys/values and append them to the low tier."""
        st = cache.state
        if st["balance"] is not None:
            k = k.float() * st["balance"][:, None, :]
        k_q, v_q = quantize(k.float(), self.bits, st["group"]), quantize(v.float(), self.bits, st["group"])
        if st["k_lo"] is not None:
            k_q = QuantizedTensor.cat([st["k_lo"], k_q], 1)
            v_q = QuantizedTensor.cat([st["v_lo"], v_q], 1)
        st["k_lo"], st["v_lo"] = k_q, v_q

    def _demote(self, cache: LayerCache) -> None:
        """Move the lowest-scoring non-recent high tokens to the low tier until the budget holds."""
        st = cache.state
        n, n_high = self._high_rows(cache), st["n_high"]
        extra = n - n_high
        if extra <= 0:
            return
        recent = min(n_high, round(self.recent_ratio * n_high))
        old = n - recent
        scores = st["scores"]
        out = torch.topk(-scores[:, :old], extra, dim=-1).indices.sort(-1).values  # lowest scores
        stay = torch.cat([complement(out, old), torch.arange(old, n).expand(scores.shape[0], -1)], 1)
        self._to_low(cache, *self._high(cache, out))
        self._keep_high(cache, stay)
        st["scores"] = torch.gather(scores, 1, stay)


def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [H, n, d] rows idx [H, m] -> [H, m, d]."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


def _qrows(qt: QuantizedTensor, idx: torch.Tensor) -> QuantizedTensor:
    """Rows idx [H, m] of a quantized [H, n, ...] tier."""
    return qt.map(lambda x: _rows(x, idx))
