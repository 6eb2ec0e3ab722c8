"""Causal attention of a chunk of query rows (a prompt, a chat turn) over the cache, in row blocks.

One softmax over [group*n queries, past+n keys] computes every masked entry too: under MPC each
costs what an allowed one costs (the max, the exp, the products all run on it), so a prompt's
causal half is paid for and thrown away, and the whole score matrix is held at once (a 1,000-token
chunk of a 2-layer model peaked near 5 GB per party). Split into blocks of consecutive query rows,
block j attends only the keys up to its own last row: the same probabilities (a masked entry is
exactly 0 either way), fewer entries, and memory bounded by ``max_entries``. Each extra block adds
one softmax's rounds, so a chunk is split only when its score matrix is over ``max_entries``.
"""

from __future__ import annotations

import math

import torch

from mpcache.core.backend import Backend, Tensor

MAX_ENTRIES = 1 << 20  # score entries (all KV heads) of one softmax call before a chunk is split


def causal_blocks(n: int, past: int, heads: int, keep_rows: int, max_entries: int | None = None) -> list[int]:
    """Block boundaries [0, b1, ..., n] over the chunk's n query rows (public: from the shapes).
    The last block holds at least ``keep_rows`` rows (the window rows a policy's stage reads)."""
    max_entries = max_entries or MAX_ENTRIES
    blocks = max(1, math.ceil(heads * n * (past + n) / max_entries))
    size = max(1, math.ceil(n / blocks))
    last = min(n, max(size, keep_rows))
    bounds = list(range(0, n - last, size)) + [n - last, n]
    return sorted(set(bounds))


def causal_attention(b: Backend, grouped: Tensor, keys: Tensor, values: Tensor, past: int, n: int,
                     keep_rows: int = 0, colsum: bool = False, max_entries: int | None = None
                     ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Attention of ``grouped`` [Hkv, g*n, d] (the chunk's scaled queries, query heads of a group
    first) over ``keys``/``values`` [Hkv, past+n, d] with the causal mask.

    Returns (out [Hkv, g*n, d], the attention each key received summed over the chunk's queries
    and the group [Hkv, past+n] when ``colsum``, the last ``keep_rows`` query rows of
    probabilities [Hkv, g, keep_rows, past+n] or None)."""
    hkv, rows, d = grouped.shape
    g, total = rows // n, keys.shape[1]
    bounds = causal_blocks(n, past, hkv * g, keep_rows, max_entries)
    if len(bounds) > 2:  # views of the whole cache are then masked once, not once per block
        keys, values = b.fix(keys), b.fix(values)
    q4 = grouped.reshape(hkv, g, n, d)
    outs, sums, window = [], None, None
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        width = past + hi
        qpos = torch.arange(lo, hi).repeat(g) + past  # public causal mask of this block
        mask = qpos[:, None] >= torch.arange(width)[None, :]
        qb = q4[:, :, lo:hi].reshape(hkv, g * (hi - lo), d) if len(bounds) > 2 else grouped
        kb, vb = (keys[:, :width], values[:, :width]) if width < total else (keys, values)
        probs = b.softmax(b.matmul_t(qb, kb), mask)
        outs.append(b.matmul(probs, vb).reshape(hkv, g, hi - lo, d))
        if colsum:
            part = b.sum(probs, 1)  # [Hkv, width]
            if sums is None:
                sums = part
            else:  # the earlier blocks cover a prefix of this one's keys: add into it
                w = sums.shape[1]
                sums = b.cat([sums + part[:, :w], part[:, w:]], dim=1)
        if hi == n and keep_rows:
            window = probs.reshape(hkv, g, hi - lo, width)[:, :, hi - lo - keep_rows :].clone()
    out = outs[0] if len(outs) == 1 else b.cat(outs, dim=2)
    return out.reshape(hkv, g * n, d), sums, window
