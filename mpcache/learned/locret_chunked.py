"""Locret's chunked prefill as the authors run it (``inference/infer.py``), labelled "faithful": each
chunk of the prompt is forwarded against the RETAINED cache only, so later chunks' hidden states
(and their keys, values and scores) never see the evicted tokens.

Schedule (b = the policy's budget in tokens): the prompt minus its last ``local_len`` tokens goes in
chunks of ``chunk``; after each chunk every layer scores the chunk's tokens with its retaining heads
(CIS, once, at insertion), and when the layer holds more than ``b - local_len`` entries it keeps the
top ones per KV head, the newest ``stabilizers * b`` processed tokens forced in (except after the
last chunk); then the last ``local_len`` tokens are forwarded without eviction. Positions stay the
original ones (Locret re-indexes survivors; a stated deviation shared with the replay mode).

The replay mode (``LocretPolicy`` without ``faithful``) applies the same schedule to the scores of
the harness's single full prefill: cheaper, optimistic. The queries each chunk needs for the scores
are read off the backend's RoPE (the model rotates q then k in every layer), so the model is unchanged.
"""

from __future__ import annotations

import torch

from mpcache.core.backend import Backend, Tensor
from mpcache.core.cache import KVCache
from mpcache.core.policy import Policy


class _RopeTap:
    """Delegates to a backend; records every ``rope`` output (per layer: q [H, n, d], then k)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.outputs: list[Tensor] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def rope(self, x: Tensor, cos: torch.Tensor, sin: torch.Tensor) -> Tensor:
        out = self.inner.rope(x, cos, sin)
        self.outputs.append(out)
        return out


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def chunked_prefill(model, policy, ids: list[int]) -> tuple[KVCache, Tensor]:
    """(cache ready for ``policy``'s decode, the last prompt token's logits). ``policy``: a LocretPolicy."""
    config, t = model.config, len(ids)
    b = policy.budget_tokens(t)
    sinks, local = min(policy.sinks, b // 4), min(policy.local_len, b // 4)
    keep = b - local
    stab = max(0, min(round(policy.stabilizers * b), keep - 1))
    chunk = max(1, min(policy.chunk, keep // 2))
    body = t - local
    cache = model.new_cache(Policy())  # no policy hooks while the schedule runs
    cis: list[torch.Tensor | None] = [None] * config.num_layers
    pos: list[torch.Tensor | None] = [None] * config.num_layers
    tap = _RopeTap(model.backend)
    model.backend = tap
    spans = [(s, min(body, s + chunk)) for s in range(0, body, chunk)] + ([(body, t)] if local else [])
    try:
        logits = None
        for start, end in spans:
            tap.outputs.clear()
            logits = model.forward(ids[start:end], cache)
            for i, lc in enumerate(cache.layers):
                q, k = tap.outputs[2 * i], tap.outputs[2 * i + 1]
                span = torch.arange(start, end)
                fresh = policy._cis(i, config, q, k, lc.v[:, start - end :], span)
                span = span.expand(fresh.shape[0], -1)
                cis[i] = fresh if cis[i] is None else torch.cat([cis[i], fresh], 1)
                pos[i] = span if pos[i] is None else torch.cat([pos[i], span], 1)
                if end <= body and lc.length > keep:
                    score = torch.where(pos[i] < sinks, torch.inf, cis[i])
                    if end < body and stab > 0:  # stabilizers: the newest processed tokens survive
                        score = torch.where(pos[i] >= end - stab, torch.inf, score)
                    idx = score.topk(keep, dim=1).indices.sort(1).values
                    lc.k, lc.v = _gather(lc.k, idx), _gather(lc.v, idx)
                    cis[i], pos[i] = cis[i].gather(1, idx), pos[i].gather(1, idx)
    finally:
        model.backend = tap.inner
    cache.policy = policy
    for i, lc in enumerate(cache.layers):
        lc.attended = lc.decode_steps = 0  # single-token chunks counted as decode steps: not ones
        lc.state.update(cis=cis[i], b=b, stab=max(0, min(stab, b - 1 - sinks)), config=config, sinks=sinks)
    return cache, logits
