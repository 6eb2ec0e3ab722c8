"""KVCrush head-behaviour signatures and Hamming distances: the PyTorch reference.

A token's signature has one bit per attention head: bit h is 1 when the token's score in head h
is above that head's threshold (KVCrush: the head's median, i.e. the token is in the top half).
Bits are packed into int32 words, bit h in word h // 32 at position h % 32 -> [N, ceil(H/32)].
The distance of a token to an anchor signature is the popcount of their XOR.
"""

from __future__ import annotations

import torch

# popcount of every byte, to count bits independently of the kernel's SWAR arithmetic
_BYTE_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def num_words(heads: int) -> int:
    return (heads + 31) // 32


def median_thresholds(scores: torch.Tensor) -> torch.Tensor:
    """Per-head lower median over tokens, [H]: bits mark strictly higher scores (the top half)."""
    return scores.float().median(dim=-1).values


def pack_signatures_ref(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """scores [H, N], thresholds [H] -> signatures [N, ceil(H/32)] int32."""
    h, n = scores.shape
    bits = (scores.float() > thresholds.float()[:, None]).to(torch.int64)  # [H, N]
    pad = num_words(h) * 32 - h
    bits = torch.cat([bits, bits.new_zeros(pad, n)]) if pad else bits
    weights = 1 << torch.arange(32, dtype=torch.int64, device=scores.device)
    words = (bits.view(-1, 32, n) * weights[None, :, None]).sum(1)  # [W, N]
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.T.contiguous().to(torch.int32)


def hamming_ref(signatures: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """signatures [N, W] int32, anchor [W] int32 -> popcount(sig ^ anchor) summed over words, [N] int32."""
    x = (signatures.to(torch.int64) ^ anchor.to(torch.int64)[None, :]) & 0xFFFFFFFF
    table = _BYTE_POPCOUNT.to(x.device)
    count = sum(table[(x >> (8 * i)) & 0xFF] for i in range(4))
    return count.sum(-1).to(torch.int32)
