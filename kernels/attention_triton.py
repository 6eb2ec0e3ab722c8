"""Fused mixed-precision decode attention in Triton (semantics: ``attention_ref``).

Split-K ("flash-decoding") in two kernels:

1. ``_partial_kernel``: one program per (batch*KV head, chunk of one tier). It loads the G query
   heads that share the KV head once (GQA: K/V are read once per group, not once per query head),
   streams its chunk of the tier in blocks of BLOCK_N tokens -- the low tier as packed int32 words,
   unpacked and dequantized in registers -- and keeps an online softmax (max m, sum denom, output acc).
   It is launched once per tier (``LOW`` constexpr), writing to disjoint partial slots.
2. ``_combine_kernel``: merges the partials of all slots of both tiers: one softmax overall.

Splitting the sequence keeps the GPU busy at batch 1 with few KV heads and long contexts.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.attention_ref import check_shapes
from kernels.quant_ref import QuantizedTensor, supported
from kernels.quant_triton import _dequant_block


@triton.jit
def _partial_kernel(
    q_ptr, k_ptr, v_ptr, ks_ptr, kz_ptr, vs_ptr, vz_ptr, bal_ptr, m_ptr, l_ptr, acc_ptr,
    n_tokens, chunk, slot0, n_slots, sm_scale,
    HKV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, GROUP: tl.constexpr,
    BITS: tl.constexpr, LOW: tl.constexpr, HAS_BAL: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    start = split * chunk
    end = tl.minimum(start + chunk, n_tokens)
    g = tl.arange(0, GP)
    gmask = g < G
    cols = tl.arange(0, D)
    q = tl.load(q_ptr + bh * G * D + g[:, None] * D + cols[None, :], mask=gmask[:, None], other=0.0)
    q = q.to(tl.float32) * sm_scale
    if HAS_BAL:  # low tier stores quant(k * b): score with q / b
        bal = tl.load(bal_ptr + (bh % HKV) * D + cols).to(tl.float32)
        q = q / bal[None, :]
    m = tl.full([GP], -1e30, tl.float32)
    denom = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    words: tl.constexpr = D * BITS // 32
    ngroups: tl.constexpr = D // GROUP
    for t0 in range(start, end, BLOCK_N):
        rows = t0 + tl.arange(0, BLOCK_N)
        rmask = rows < end
        if LOW:
            pbase = bh * n_tokens * words
            sbase = bh * n_tokens * ngroups
            k = _dequant_block(k_ptr + pbase, ks_ptr + sbase, kz_ptr + sbase, rows, rmask, words, ngroups,
                               D, GROUP, BITS)
            v = _dequant_block(v_ptr + pbase, vs_ptr + sbase, vz_ptr + sbase, rows, rmask, words, ngroups,
                               D, GROUP, BITS)
        else:
            ofs = bh * n_tokens * D + rows[:, None] * D + cols[None, :]
            k = tl.load(k_ptr + ofs, mask=rmask[:, None], other=0.0).to(tl.float32)
            v = tl.load(v_ptr + ofs, mask=rmask[:, None], other=0.0).to(tl.float32)
        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # [GP, BLOCK_N]
        s = tl.where(rmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        denom = denom * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m = m_new
    slot = bh * n_slots + slot0 + split
    tl.store(m_ptr + slot * GP + g, m)
    tl.store(l_ptr + slot * GP + g, denom)
    tl.store(acc_ptr + slot * GP * D + g[:, None] * D + cols[None, :], acc)


@triton.jit
def _combine_kernel(
    m_ptr, l_ptr, acc_ptr, out_ptr, lse_ptr, n_slots,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    g = tl.arange(0, GP)
    cols = tl.arange(0, D)
    m_all = tl.full([GP], -1e30, tl.float32)
    l_all = tl.zeros([GP], tl.float32)
    acc_all = tl.zeros([GP, D], tl.float32)
    for s in range(0, n_slots):
        slot = bh * n_slots + s
        m = tl.load(m_ptr + slot * GP + g)
        denom = tl.load(l_ptr + slot * GP + g)
        acc = tl.load(acc_ptr + slot * GP * D + g[:, None] * D + cols[None, :])
        m_new = tl.maximum(m_all, m)
        a = tl.exp(m_all - m_new)
        b = tl.exp(m - m_new)
        l_all = l_all * a + denom * b
        acc_all = acc_all * a[:, None] + acc * b[:, None]
        m_all = m_new
    out = acc_all / l_all[:, None]
    ofs = bh * G * D + g[:, None] * D + cols[None, :]
    tl.store(out_ptr + ofs, out.to(out_ptr.dtype.element_ty), mask=(g < G)[:, None])
    tl.store(lse_ptr + bh * G + g, m_all + tl.log(l_all), mask=g < G)


def _block_n(gp: int, d: int) -> int:
    return max(16, min(128, triton.next_power_of_2(max(1, 4096 // (gp * d)))))


def _chunk(n: int, bh: int, block: int, target_programs: int) -> int:
    """Tokens per split so that about ``target_programs`` programs share a tier."""
    splits = max(1, target_programs // max(bh, 1))
    return block * triton.cdiv(triton.cdiv(n, splits), block)


def mixed_decode_attention_triton(
    q: torch.Tensor,
    k_hi: torch.Tensor | None,
    v_hi: torch.Tensor | None,
    k_lo: QuantizedTensor | None,
    v_lo: QuantizedTensor | None,
    key_balance: torch.Tensor | None = None,
    sm_scale: float | None = None,
    target_programs: int | None = None,
    return_lse: bool = False,
):
    b, hkv, g = check_shapes(q, k_hi, v_hi, k_lo, v_lo)
    d = q.shape[-1]
    same_layout = k_lo is None or (k_lo.group == v_lo.group and k_lo.bits == v_lo.bits)
    if k_lo is not None and (not supported(d, k_lo.group) or not same_layout):
        raise ValueError("Triton mixed attention needs power-of-two dim/group and one low-tier layout")
    if d & (d - 1):
        raise ValueError(f"Triton mixed attention needs a power-of-two head dim, got {d}")
    scale = d**-0.5 if sm_scale is None else sm_scale
    if target_programs is None:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4
        target_programs = 2 * sms
    gp = triton.next_power_of_2(g)
    block = _block_n(gp, d)
    bh = b * hkv
    qc = q.contiguous()
    tiers = []  # (n, chunk)
    for present, n in ((k_hi is not None, 0 if k_hi is None else k_hi.shape[2]),
                       (k_lo is not None, 0 if k_lo is None else k_lo.rows)):
        tiers.append((n, _chunk(n, bh, block, target_programs)) if present and n > 0 else (0, 1))
    n_slots = sum(triton.cdiv(n, c) for n, c in tiers)
    if n_slots == 0:
        raise ValueError("mixed attention over an empty cache")
    m = torch.empty(bh, n_slots, gp, dtype=torch.float32, device=q.device)
    lsum = torch.empty_like(m)
    acc = torch.empty(bh, n_slots, gp, d, dtype=torch.float32, device=q.device)
    out = torch.empty_like(qc)
    common = dict(HKV=hkv, G=g, GP=gp, D=d, BLOCK_N=block)
    slot0 = 0
    (n_hi, c_hi), (n_lo, c_lo) = tiers
    if n_hi:
        kh, vh = k_hi.contiguous(), v_hi.contiguous()
        _partial_kernel[(bh, triton.cdiv(n_hi, c_hi))](
            qc, kh, vh, kh, kh, kh, kh, kh, m, lsum, acc, n_hi, c_hi, slot0, n_slots, scale,
            GROUP=1, BITS=1, LOW=False, HAS_BAL=False, **common,
        )
        slot0 += triton.cdiv(n_hi, c_hi)
    if n_lo:
        kp, ks, kz = (t.contiguous() for t in (k_lo.packed, k_lo.scale, k_lo.zero))
        vp, vs, vz = (t.contiguous() for t in (v_lo.packed, v_lo.scale, v_lo.zero))
        bal = key_balance.to(torch.float32).contiguous() if key_balance is not None else ks
        _partial_kernel[(bh, triton.cdiv(n_lo, c_lo))](
            qc, kp, vp, ks, kz, vs, vz, bal, m, lsum, acc, n_lo, c_lo, slot0, n_slots, scale,
            GROUP=k_lo.group, BITS=k_lo.bits, LOW=True, HAS_BAL=key_balance is not None, **common,
        )
    lse = torch.empty(b, hkv * g, dtype=torch.float32, device=q.device)
    _combine_kernel[(bh,)](m, lsum, acc, out, lse, n_slots, G=g, GP=gp, D=d)
    return (out, lse) if return_lse else out
