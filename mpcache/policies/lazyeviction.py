"""LazyEviction (arXiv 2506.15969): lagged eviction by recurrence intervals, per KV head.

Each cached token keeps LR (the last step at which it was important: attention >= ``alpha`` for any
query head of its group) and MRI (the longest interval between two such steps). Every ``window`` (W)
decode steps, once the cache holds more than C entries, it keeps the newest W tokens plus the top
C - W older ones by the recurrence score, with sigma2(x) = 2 / (1 + e^x) and Delta = t - LR:

    score = sigma2(1 + Delta / (MRI + 1e-5)) + (MRI > 0 ? sigma2(MRI - 1) : 0)

(formulas as in the authors' code). C = budget_tokens(T) - W, so the cache oscillates between C and
C + W entries and no step attends more than the budget. W is capped at budget_tokens / 5 (W <= C/4).

Modes. ``prompt_window=0`` is the faithful method: the prompt is not compressed, tracking starts at
the first decode step, eviction happens only after W decode steps (a ~10-token needle answer never
evicts). ``prompt_window=P`` (default 32, ADAPTED, not in the paper) replays the last P prompt
queries as steps t = 1..P with their causal attention rows, evicts once to C at the end of prefill,
then continues as the faithful method.

Plaintext only: the tracking needs comparisons (a >= alpha, max) the Backend does not offer.
Extra state: LR and MRI, int32 each, per token and KV head (counted in ``extra_nbytes``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpcache.core.backend import Backend, Tensor
from mpcache.core.cache import LayerCache
from mpcache.core.errors import UserError
from mpcache.core.policy import Policy, PromptInfo
from mpcache.core.window import window_attention


def sigma2(x: torch.Tensor) -> torch.Tensor:
    return 2.0 / (1.0 + torch.exp(x))


def recurrence_score(t: int, lr: torch.Tensor, mri: torch.Tensor) -> torch.Tensor:
    """The recurrence-interval score at step ``t`` (higher = keep)."""
    delta = (t - lr).double()
    mri = mri.double()
    return sigma2(1.0 + delta / (mri + 1e-5)) + torch.where(mri > 0, sigma2(mri - 1.0), 0.0)


def track(t: int, a: torch.Tensor, lr: torch.Tensor, mri: torch.Tensor, alpha: float) -> None:
    """One step's update in place: ``a`` [Hkv, n] attention (max over the group's query heads)."""
    hit = a >= alpha
    lr_old = lr.clone()
    lr[hit] = t
    torch.maximum(mri, lr - lr_old, out=mri)


@dataclass(frozen=True)
class LazyEvictionPolicy(Policy):
    alpha: float = 1e-4  # importance threshold on attention probabilities
    window: int = 16  # W: steps between evictions, and the newest tokens always kept
    prompt_window: int = 32  # adapted mode: last prompt queries replayed as steps (0 = faithful)

    name = "lazyeviction"
    backends = ("plain",)
    plaintext_only_because = "its recurrence tracking needs comparisons"

    def __post_init__(self) -> None:
        if self.window < 1 or self.prompt_window < 0 or not 0.0 < self.alpha < 1.0:
            raise UserError("lazyeviction: window >= 1, prompt_window >= 0 and 0 < alpha < 1 required")

    def after_prefill(self, layer: int, prompt: PromptInfo, cache: LayerCache, backend: Backend) -> None:
        t_len = cache.length
        n_budget = self.budget_tokens(t_len)
        if n_budget >= t_len and self.budget >= 1.0:
            cache.state["off"] = True  # no limit: nothing to track
            return
        w = max(1, min(self.window, n_budget // 5))
        hkv = cache.k.shape[0]
        st = cache.state
        st.update(off=False, w=w, capacity=max(w, n_budget - w), t=0, since=0,
                  lr=torch.zeros(hkv, t_len, dtype=torch.int32),
                  mri=torch.zeros(hkv, t_len, dtype=torch.int32))
        p = min(self.prompt_window, t_len - 1)
        if p < 1:
            return
        probs = window_attention(prompt.q, cache.k, p, backend)  # [Hkv, g, P, T]
        a = probs.amax(1)  # [Hkv, P, T]
        for s in range(1, p + 1):
            row = t_len - p + s - 1  # the prompt token that plays "new token" at step s
            st["lr"][:, row] = s - 1
            track(s, a[:, s - 1, : row + 1], st["lr"][:, : row + 1], st["mri"][:, : row + 1], self.alpha)
        st["t"] = p
        if cache.length > st["capacity"]:
            self._evict(cache, backend)

    def decode_kv(self, layer: int, q: Tensor, cache: LayerCache, backend: Backend) -> tuple[Tensor, Tensor]:
        st = cache.state
        if st.get("off", True):
            return cache.k, cache.v
        new = cache.length - st["lr"].shape[1]
        if new > 0:  # the appended token(s): LR = t - 1 (t is the step being taken), MRI = 0
            st["t"] += 1
            fresh = torch.full((cache.k.shape[0], new), st["t"] - 1, dtype=torch.int32)
            st["lr"] = torch.cat([st["lr"], fresh], 1)
            st["mri"] = torch.cat([st["mri"], torch.zeros_like(fresh)], 1)
        return cache.k, cache.v

    def observe(self, layer: int, probs: Tensor, cache: LayerCache, backend: Backend) -> None:
        st = cache.state
        if st.get("off", True):
            return
        track(st["t"], probs.amax(1), st["lr"], st["mri"], self.alpha)
        st["since"] += 1
        if st["since"] >= st["w"] and cache.length > st["capacity"]:
            self._evict(cache, backend)

    def _evict(self, cache: LayerCache, backend: Backend) -> None:
        """Keep the newest W tokens plus the top C - W older ones by recurrence score."""
        st = cache.state
        st["since"] = 0
        n, w, cap = cache.length, st["w"], st["capacity"]
        old = n - w
        sel = backend.topk(recurrence_score(st["t"], st["lr"][:, :old], st["mri"][:, :old]), cap - w)
        parts = {"k": cache.k, "v": cache.v, "lr": st["lr"][..., None], "mri": st["mri"][..., None]}
        kept = {key: torch.cat([backend.gather(sel, x[:, :old]), x[:, old:]], 1) for key, x in parts.items()}
        cache.k, cache.v = kept["k"], kept["v"]
        st["lr"], st["mri"] = kept["lr"][..., 0], kept["mri"][..., 0]

    def extra_nbytes(self, cache: LayerCache) -> int:
        lr = cache.state.get("lr")
        return 0 if lr is None else 2 * lr.numel() * 4
