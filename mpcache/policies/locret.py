"""Locret (arXiv 2410.01805): trained retaining heads score each token once, at insertion, and a
chunked prefill keeps the top-scored tokens per KV head within a fixed budget.

Per layer, an MLP on the token's pre-RoPE [q; k; v] (``mpcache.learned.locret``) gives one causal
importance score (CIS) per KV head; it never changes. Prefill, as the authors' inference: all
prompt tokens but the last ``local_len`` are processed in chunks of ``chunk``; after each chunk the
retained set (previous survivors + the chunk) is cut to the top ``b - local_len`` by CIS per KV
head, the newest ``stabilizers * b`` processed tokens forced in (except after the last chunk); then
the last ``local_len`` tokens (the question) are kept uncompressed. ``b = budget_tokens(T)``.

``faithful=true`` runs the authors' schedule for real (``mpcache.learned.locret_chunked``): each
chunk is forwarded against the retained cache only. Otherwise (the default, "replay"):
Deviations (labelled): the chunk schedule is replayed on the activations of the harness's full
prefill (in Locret each chunk's hidden states see only the retained cache: ours see the full prompt,
likely optimistic); positions stay the original ones (Locret re-indexes survivors contiguously).
Decode: Locret lets the cache grow; ``decode_evict=true`` (default, an extension for budget parity)
scores each new token and evicts the lowest-CIS entry outside the newest ``stabilizers * b`` once
the cache exceeds ``b``, so every step attends exactly ``b`` keys.

Plaintext only (the heads are plaintext MLPs for now). Extra state: the CIS, fp32 per token and KV
head (``extra_nbytes``); extra parameters: the heads (recorded with their training time).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mpcache.core.backend import Backend, Tensor
from mpcache.core.cache import LayerCache
from mpcache.core.errors import UserError
from mpcache.core.policy import Policy, PromptInfo
from mpcache.learned import locret as heads_lib
from mpcache.learned import provenance, store
from mpcache.learned.features import token_features
from mpcache.learned.locret_chunked import chunked_prefill

_HEADS: dict[str, tuple[heads_lib.RetainingHeads, dict]] = {}


def chunked_keep(cis: torch.Tensor, keep: int, chunk: int, stab: int) -> torch.Tensor:
    """Indices [Hkv, <= keep] (ascending) surviving Locret's chunked eviction of tokens 0..n-1."""
    hkv, n = cis.shape
    kept = torch.empty(hkv, 0, dtype=torch.long)
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        cand = torch.cat([kept, torch.arange(start, end).expand(hkv, -1)], 1)
        if cand.shape[1] <= keep:
            kept = cand
            continue
        score = cis.gather(1, cand)
        if end < n and stab > 0:  # stabilizers: the newest processed tokens survive this cut
            score = torch.where(cand >= end - stab, torch.inf, score)
        kept = cand.gather(1, score.topk(keep, dim=1).indices).sort(1).values
    return kept


@dataclass(frozen=True)
class LocretPolicy(Policy):
    stabilizers: float = 0.25  # fraction of the budget
    chunk: int = 128
    local_len: int = 32
    decode_evict: bool = True
    weights: str = ""  # PATH; "" = trained heads for this model (seed ``seed``); "untrained" = random
    seed: int = 0
    hidden: int = 128  # only for weights=untrained
    sinks: int = 0  # first tokens always kept (NOT in Locret; our option, see the README)
    faithful: bool = False  # chunked prefill against the retained cache (locret_chunked), not a replay

    name = "locret"
    backends = ("plain",)
    plaintext_only_because = "its retaining heads are plaintext MLPs"

    def __post_init__(self) -> None:
        if not 0.0 <= self.stabilizers < 1.0 or self.chunk < 1 or self.local_len < 0:
            raise UserError("locret: 0 <= stabilizers < 1, chunk >= 1 and local_len >= 0 required")

    def heads(self, config) -> tuple[heads_lib.RetainingHeads, dict]:
        if self.weights == "untrained":
            key = f"untrained:{store.model_tag(config)}:{self.seed}:{self.hidden}"
            if key not in _HEADS:
                _HEADS[key] = (heads_lib.RetainingHeads.for_model(config, self.hidden, self.seed), {})
            return _HEADS[key]
        path = self.weights_path(config)
        if str(path) not in _HEADS:
            _HEADS[str(path)] = heads_lib.load_heads(path, config)
        return _HEADS[str(path)]

    def weights_path(self, config):
        if self.weights:
            return Path(self.weights)
        return store.weights_path(heads_lib.KIND, store.model_tag(config), self.seed)

    def record_extras(self, config) -> dict:
        if self.budget >= 1.0:
            return {}
        heads, meta = self.heads(config)
        return {"extra_params": sum(p.numel() for p in heads.parameters()),
                "train_seconds": meta.get("train_seconds"), "weights": self.weights or "default",
                "provenance": provenance.summary(meta)}

    def own_prefill(self, model, ids: list[int]):
        """(cache, logits) of the faithful chunked prefill, or None: the runner replays its full prefill."""
        if not self.faithful or self.budget >= 1.0:
            return None
        self.check_backend(model.backend.name)
        return chunked_prefill(model, self, ids)

    def _cis(self, layer: int, config, q, k, v, positions) -> torch.Tensor:
        heads, _ = self.heads(config)
        with torch.no_grad():
            return heads(layer, token_features(q, k, v, positions, config)).T.contiguous()  # [Hkv, n]

    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        if self.budget >= 1.0:
            return
        t, config = cache.length, prompt.config
        b = self.budget_tokens(t)
        cis = self._cis(layer, config, prompt.q, cache.k, cache.v, torch.arange(t))
        sinks = min(self.sinks, b // 4)
        local = min(self.local_len, b // 4)
        keep = b - local
        stab = max(0, min(round(self.stabilizers * b), keep - 1))
        if t > b:
            forced = torch.where(torch.arange(t) < sinks, torch.inf, cis)  # sinks survive every cut
            kept = chunked_keep(forced[:, : t - local], keep, max(1, min(self.chunk, keep // 2)), stab)
            idx = torch.cat([kept, torch.arange(t - local, t).expand(kept.shape[0], -1)], 1)
            cache.k = cache.k.gather(1, idx[..., None].expand(-1, -1, cache.k.shape[-1]))
            cache.v = cache.v.gather(1, idx[..., None].expand(-1, -1, cache.v.shape[-1]))
            cis = cis.gather(1, idx)
        cache.state.update(cis=cis, b=b, stab=max(0, min(stab, b - 1 - sinks)), config=config, sinks=sinks)

    def decode_kv(self, layer: int, q: Tensor, cache: LayerCache, backend: Backend) -> tuple[Tensor, Tensor]:
        st = cache.state
        if "cis" not in st:
            return cache.k, cache.v
        new = cache.length - st["cis"].shape[1]
        if new > 0:
            pos = torch.arange(cache.appended - new, cache.appended)
            fresh = self._cis(layer, st["config"], q[:, -new:], cache.k[:, -new:], cache.v[:, -new:], pos)
            st["cis"] = torch.cat([st["cis"], fresh], 1)
        while self.decode_evict and cache.length > st["b"]:
            n = cache.length
            lo = st["sinks"]  # kept entries are in position order: the sinks come first
            drop = st["cis"][:, lo : n - st["stab"]].argmin(1) + lo  # lowest CIS outside sinks/stabilizers
            keep = torch.ones(cache.k.shape[0], n, dtype=torch.bool)
            keep[torch.arange(keep.shape[0]), drop] = False
            idx = keep.nonzero()[:, 1].view(keep.shape[0], n - 1)
            cache.k = cache.k.gather(1, idx[..., None].expand(-1, -1, cache.k.shape[-1]))
            cache.v = cache.v.gather(1, idx[..., None].expand(-1, -1, cache.v.shape[-1]))
            st["cis"] = st["cis"].gather(1, idx)
        return cache.k, cache.v

    def extra_nbytes(self, cache: LayerCache) -> int:
        cis = cache.state.get("cis")
        return 0 if cis is None else cis.numel() * 4
