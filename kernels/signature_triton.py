"""Triton signature packing and popcount Hamming distance (semantics: ``signature_ref``).

``_pack_kernel``: one program per block of tokens; for each 32-head word it compares the scores
with the per-head thresholds and ORs the bits into one int32. ``_hamming_kernel``: XOR with the
anchor and a branch-free SWAR popcount (no libdevice call, so it also runs in the interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.signature_ref import num_words

BLOCK = 128


@triton.jit
def _pack_kernel(scores_ptr, thr_ptr, sig_ptr, n_heads, n_tokens, s_stride, n_words, BLOCK_N: tl.constexpr):
    tok = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    tmask = tok < n_tokens
    lane = tl.arange(0, 32)
    for w in range(0, n_words):
        head = w * 32 + lane
        hmask = head < n_heads
        s = tl.load(scores_ptr + head[:, None] * s_stride + tok[None, :],
                    mask=hmask[:, None] & tmask[None, :], other=0.0).to(tl.float32)
        thr = tl.load(thr_ptr + head, mask=hmask, other=0.0).to(tl.float32)
        bit = ((s > thr[:, None]) & hmask[:, None]).to(tl.int64) << lane.to(tl.int64)[:, None]
        word = tl.sum(bit, axis=0)  # disjoint bits: the sum is an OR
        tl.store(sig_ptr + tok * n_words + w, word.to(tl.int32), mask=tmask)


@triton.jit
def _popcount32(x):
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return (x * 0x01010101) >> 24


@triton.jit
def _hamming_kernel(sig_ptr, anchor_ptr, out_ptr, n_tokens, n_words, BLOCK_N: tl.constexpr):
    tok = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    tmask = tok < n_tokens
    total = tl.zeros([BLOCK_N], tl.int32)
    for w in range(0, n_words):
        s = tl.load(sig_ptr + tok * n_words + w, mask=tmask, other=0).to(tl.uint32, bitcast=True)
        a = tl.load(anchor_ptr + w).to(tl.uint32, bitcast=True)
        total += _popcount32(s ^ a).to(tl.int32)
    tl.store(out_ptr + tok, total, mask=tmask)


def pack_signatures_triton(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    h, n = scores.shape
    s = scores if scores.stride(-1) == 1 else scores.contiguous()
    w = num_words(h)
    sig = torch.empty(n, w, dtype=torch.int32, device=scores.device)
    if n:
        grid = (triton.cdiv(n, BLOCK),)
        _pack_kernel[grid](s, thresholds.contiguous(), sig, h, n, s.stride(0), w, BLOCK_N=BLOCK)
    return sig


def hamming_triton(signatures: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    n, w = signatures.shape
    if anchor.shape != (w,):
        raise ValueError(f"anchor must have {w} words, got {tuple(anchor.shape)}")
    sig = signatures.to(torch.int32).contiguous()
    out = torch.empty(n, dtype=torch.int32, device=signatures.device)
    if n:
        anchor32 = anchor.to(torch.int32).contiguous()
        _hamming_kernel[(triton.cdiv(n, BLOCK),)](sig, anchor32, out, n, w, BLOCK_N=BLOCK)
    return out
