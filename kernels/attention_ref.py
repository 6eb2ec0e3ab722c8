"""Mixed-precision decode attention: the PyTorch reference.

One decode query per head attends over two tiers of the same layer's cache with ONE softmax:
a high-precision tier (k_hi, v_hi, any float dtype) and a low tier of packed codes
(``QuantizedTensor``). With a key channel balancer ``b`` the low tier stores quant(k * b), so its
scores use q / b. GQA: query head h reads KV head h // (Hq / Hkv), as in HF's ``repeat_kv``.

Shapes: q [B, Hq, d]; tiers [B, Hkv, n, d] (packed: [B, Hkv, n, d*bits/32]); key_balance [Hkv, d].
"""

from __future__ import annotations

import torch

from kernels.quant_ref import QuantizedTensor, dequantize_ref


def check_shapes(q, k_hi, v_hi, k_lo, v_lo) -> tuple[int, int, int]:
    """Validate and return (B, Hkv, group)."""
    if k_hi is None and k_lo is None:
        raise ValueError("mixed attention needs at least one tier")
    if (k_hi is None) != (v_hi is None) or (k_lo is None) != (v_lo is None):
        raise ValueError("keys and values of a tier go together")
    if q.dim() != 3:
        raise ValueError(f"q must be [B, Hq, d], got {tuple(q.shape)}")
    b, hq, d = q.shape
    ref = k_hi if k_hi is not None else k_lo.scale
    hkv = ref.shape[1]
    if ref.shape[0] != b or hq % hkv:
        raise ValueError(f"batch/heads mismatch: q {tuple(q.shape)}, cache heads {hkv}")
    if k_hi is not None and (k_hi.shape[-1] != d or v_hi.shape != k_hi.shape):
        raise ValueError("high tier shapes do not match q")
    if k_lo is not None and (k_lo.dim != d or v_lo.dim != d or k_lo.rows != v_lo.rows):
        raise ValueError("low tier shapes do not match q")
    return b, hkv, hq // hkv


def mixed_decode_attention_ref(
    q: torch.Tensor,
    k_hi: torch.Tensor | None,
    v_hi: torch.Tensor | None,
    k_lo: QuantizedTensor | None,
    v_lo: QuantizedTensor | None,
    key_balance: torch.Tensor | None = None,
    sm_scale: float | None = None,
    return_lse: bool = False,
):
    """Output [B, Hq, d] (q's dtype); with ``return_lse`` also the softmax's log-normaliser [B, Hq]
    (fp32), from which a caller recovers any token's probability exp(score - lse)."""
    b, hkv, g = check_shapes(q, k_hi, v_hi, k_lo, v_lo)
    d = q.shape[-1]
    scale = d**-0.5 if sm_scale is None else sm_scale
    qg = q.float().reshape(b, hkv, g, d) * scale
    scores, values = [], []
    if k_hi is not None:
        scores.append(qg @ k_hi.float().transpose(-1, -2))
        values.append(v_hi.float())
    if k_lo is not None:
        q_lo = qg if key_balance is None else qg / key_balance.float()[None, :, None, :]
        scores.append(q_lo @ dequantize_ref(k_lo).transpose(-1, -2))
        values.append(dequantize_ref(v_lo))
    scores = torch.cat(scores, -1)
    probs = torch.softmax(scores, dim=-1)
    out = (probs @ torch.cat(values, -2)).reshape(b, hkv * g, d).to(q.dtype)  # [B, Hkv, g, d] -> [B, Hq, d]
    if return_lse:
        return out, torch.logsumexp(scores, -1).reshape(b, hkv * g)
    return out
