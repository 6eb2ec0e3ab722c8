"""The one dispatch point: Triton kernels for CUDA tensors, PyTorch references otherwise.

Policies call only these functions. ``MPCACHE_KERNELS`` overrides the choice: ``torch`` forces the
references everywhere, ``triton`` forces the kernels (on CPU that needs ``TRITON_INTERPRET=1`` set
before the kernels are first imported). Kernel modules are imported lazily, so importing this
module never compiles or decorates anything.
"""

from __future__ import annotations

import os
from functools import cache

import torch

from kernels.attention_ref import mixed_decode_attention_ref
from kernels.quant_ref import QuantizedTensor, check_layout, dequantize_ref, quantize_ref, supported
from kernels.signature_ref import hamming_ref, pack_signatures_ref


@cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(t: torch.Tensor) -> bool:
    mode = os.environ.get("MPCACHE_KERNELS", "auto")
    if mode == "torch":
        return False
    if mode == "triton":
        return triton_available()
    return t.is_cuda and triton_available()


def quantize(x: torch.Tensor, bits: int, group: int) -> QuantizedTensor:
    check_layout(x.shape[-1], bits, group)
    if use_triton(x) and supported(x.shape[-1], group):
        from kernels.quant_triton import quantize_triton

        return quantize_triton(x, bits, group)
    return quantize_ref(x, bits, group)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if use_triton(qt.packed) and supported(qt.dim, qt.group):
        from kernels.quant_triton import dequantize_triton

        return dequantize_triton(qt, dtype)
    return dequantize_ref(qt, dtype)


def mixed_decode_attention(
    q: torch.Tensor,
    k_hi: torch.Tensor | None,
    v_hi: torch.Tensor | None,
    k_lo: QuantizedTensor | None,
    v_lo: QuantizedTensor | None,
    key_balance: torch.Tensor | None = None,
    sm_scale: float | None = None,
    return_lse: bool = False,
):
    """One softmax over both tiers; q [B, Hq, d], tiers [B, Hkv, n, d] -> out [B, Hq, d] (, lse [B, Hq])."""
    d = q.shape[-1]
    ok = d & (d - 1) == 0 and (k_lo is None or (supported(d, k_lo.group) and k_lo.group == v_lo.group))
    if use_triton(q) and ok:
        from kernels.attention_triton import mixed_decode_attention_triton

        return mixed_decode_attention_triton(
            q, k_hi, v_hi, k_lo, v_lo, key_balance, sm_scale, return_lse=return_lse
        )
    return mixed_decode_attention_ref(q, k_hi, v_hi, k_lo, v_lo, key_balance, sm_scale, return_lse)


def pack_signatures(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """scores [H, N] vs per-head thresholds [H] -> bit signatures [N, ceil(H/32)] int32."""
    if use_triton(scores):
        from kernels.signature_triton import pack_signatures_triton

        return pack_signatures_triton(scores, thresholds)
    return pack_signatures_ref(scores, thresholds)


def hamming(signatures: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Hamming distance of each signature [N, W] to ``anchor`` [W] -> [N] int32."""
    if use_triton(signatures):
        from kernels.signature_triton import hamming_triton

        return hamming_triton(signatures, anchor)
    return hamming_ref(signatures, anchor)
