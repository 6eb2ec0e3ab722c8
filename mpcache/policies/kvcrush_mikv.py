"""KVCrush + MiKV: KVCrush's kept set (important tokens + signature representatives) stays in high
precision, every other token is kept at low precision instead of being dropped.

The budget is the high tier's share r of the prompt, as for MiKV; decode (new tokens high,
demotion of the lowest H2O score, one softmax over both tiers) is MiKV's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpcache.core.backend import Backend
from mpcache.core.cache import LayerCache
from mpcache.core.policy import PromptInfo
from mpcache.policies.kvcrush import KVCrushConfig, kvcrush_keep
from mpcache.policies.mikv import MiKVPolicy


@dataclass(frozen=True)
class KVCrushMiKVPolicy(MiKVPolicy, KVCrushConfig):
    name = "kvcrush+mikv"

    def __post_init__(self) -> None:
        MiKVPolicy.__post_init__(self)
        self.check()

    def important(self, prompt: PromptInfo, cache: LayerCache, n_high: int, backend: Backend) -> torch.Tensor:
        return kvcrush_keep(prompt, cache.k, n_high, self, backend)
