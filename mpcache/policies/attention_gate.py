"""Attention-Gate, AG-style (our reconstruction of arXiv 2410.12876; no public code): a trained gate
per layer scores every token per KV head at insertion (``mpcache.learned.gate``), and the cache
keeps the top scores ("AG-topk") so that each step attends exactly the budget.

After prefill, per layer and KV head: the first ``sinks`` tokens, the last ``local_len`` prompt
tokens and the top ``b - sinks - local_len`` others by gate logit, ``b = budget_tokens(T)``. Each
decoded token gets its gate logit (the gate attends over its own K'/V' of ALL tokens so far); once
the cache holds more than ``b`` entries the lowest-logit entry outside the sinks and the newest
``local_len`` goes. The paper thresholds flags (sigmoid(g) > 0.5, a data-dependent kept count); the
threshold's "natural" eviction rate is reported by training, the eval uses top-k for budget parity.

Plaintext only (the gates are plaintext modules for now). Extra state, in ``extra_nbytes``: the
gate logits (fp32 per kept token and KV head) and the gate's own K'/V' for every token seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mpcache.core.backend import Backend, Tensor
from mpcache.core.cache import LayerCache
from mpcache.core.errors import UserError
from mpcache.core.policy import Policy, PromptInfo
from mpcache.learned import gate_train, provenance, store
from mpcache.learned.features import token_features
from mpcache.learned.gate import Gates

_GATES: dict[str, tuple[Gates, dict]] = {}


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


@dataclass(frozen=True)
class AttentionGatePolicy(Policy):
    sinks: int = 4
    local_len: int = 32
    weights: str = ""  # PATH; "" = trained gates for this model (seed ``seed``); "untrained" = fresh init
    seed: int = 0

    name = "attention-gate"
    backends = ("plain",)
    plaintext_only_because = "its gates are plaintext modules"

    def __post_init__(self) -> None:
        if self.sinks < 0 or self.local_len < 0:
            raise UserError("attention-gate: sinks and local_len must be >= 0")

    def weights_path(self, config) -> Path:
        return Path(self.weights) if self.weights else store.weights_path(
            gate_train.KIND, store.model_tag(config), self.seed)

    def gates(self, config) -> tuple[Gates, dict]:
        if self.weights == "untrained":
            key = f"untrained:{store.model_tag(config)}:{self.seed}"
            if key not in _GATES:
                g = Gates(config, seed=self.seed)
                torch.nn.init.normal_(g.wo, std=0.05, generator=torch.Generator().manual_seed(self.seed))
                _GATES[key] = (g.requires_grad_(False), {})
            return _GATES[key]
        path = str(self.weights_path(config))
        if path not in _GATES:
            _GATES[path] = gate_train.load_gates(Path(path), config)
        return _GATES[path]

    def record_extras(self, config) -> dict:
        if self.budget >= 1.0:
            return {}
        gates, meta = self.gates(config)
        return {"extra_params": sum(p.numel() for p in gates.parameters()),
                "train_seconds": meta.get("train_seconds"), "weights": self.weights or "default",
                "provenance": provenance.summary(meta)}

    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        if self.budget >= 1.0:
            return
        t, config = cache.length, prompt.config
        gates, _ = self.gates(config)
        b = self.budget_tokens(t)
        with torch.no_grad():
            x = token_features(prompt.q, cache.k, cache.v, torch.arange(t), config)
            logits, gk, gv = gates.prompt_logits(layer, x)
        g = logits.T.contiguous()  # [Hkv, T]
        sinks, local = min(self.sinks, b // 4), min(self.local_len, b // 4)
        if t > b:
            hkv = g.shape[0]
            top = g[:, sinks : t - local].topk(b - sinks - local, dim=1).indices.sort(1).values + sinks
            ends = torch.arange(sinks).expand(hkv, -1), torch.arange(t - local, t).expand(hkv, -1)
            idx = torch.cat([ends[0], top, ends[1]], 1)
            cache.k, cache.v, g = _gather(cache.k, idx), _gather(cache.v, idx), g.gather(1, idx)
        cache.state.update(g=g, gk=gk, gv=gv, b=b, sinks=sinks, local=local, config=config)

    def decode_kv(self, layer: int, q: Tensor, cache: LayerCache, backend: Backend) -> tuple[Tensor, Tensor]:
        st = cache.state
        if "g" not in st:
            return cache.k, cache.v
        new = cache.length - st["g"].shape[1]
        if new > 0:
            gates, _ = self.gates(st["config"])
            pos = torch.arange(cache.appended - new, cache.appended)
            with torch.no_grad():
                x = token_features(q[:, -new:], cache.k[:, -new:], cache.v[:, -new:], pos, st["config"])
                gq, gk, gv = gates.project(layer, x)
                st["gk"], st["gv"] = torch.cat([st["gk"], gk], 1), torch.cat([st["gv"], gv], 1)
                fresh = gates.logits(layer, x, gq, st["gk"], st["gv"], cache.appended - new)
            st["g"] = torch.cat([st["g"], fresh.T], 1)
        while cache.length > st["b"]:
            n, lo = cache.length, st["sinks"]
            drop = st["g"][:, lo : n - st["local"]].argmin(1) + lo
            keep = torch.ones(st["g"].shape[0], n, dtype=torch.bool)
            keep[torch.arange(keep.shape[0]), drop] = False
            idx = keep.nonzero()[:, 1].view(keep.shape[0], n - 1)
            cache.k, cache.v, st["g"] = _gather(cache.k, idx), _gather(cache.v, idx), st["g"].gather(1, idx)
        return cache.k, cache.v

    def extra_nbytes(self, cache: LayerCache) -> int:
        st = cache.state
        if "g" not in st:
            return 0
        return 4 * (st["g"].numel() + st["gk"].numel() + st["gv"].numel())
