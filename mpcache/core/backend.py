"""The Backend seam: every tensor op the transformer and the policies need.

The model and the policies are written once against :class:`Backend`. ``PlainBackend`` runs them on
ordinary torch tensors; the MPC backend (``protocols.mpc.backend``) runs them on CrypTen secret shares.
Shapes are always public; values may be secret. Public constants (masks, RoPE tables, scalars)
are plain torch tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from mpcache.core import approx
from mpcache.core.errors import UserError
from mpcache.core.selected import SelectedRows, materialize

Tensor = Any  # torch.Tensor in plaintext, a CrypTen tensor under MPC


@dataclass
class Approximations:
    """Which non-linear approximations to use. ``exact`` everywhere means plain torch math.

    The MPC backend always approximates; PlainBackend uses these to simulate the MPC numerics so
    their accuracy effect can be measured in plaintext. Named presets (:meth:`preset`): ``v1`` (the
    first construction, the defaults below) and ``fast`` (fewer rounds; see ``PRESETS``).
    """

    exact: bool = True
    exp_iterations: int = 8  # exp(x) ~ (1 + x / 2^n)^(2^n)
    # exp(-y), y >= 0 (softmax after the max, SiLU's exp(-|x|)): "limit" (the formula above, n
    # squarings) or "table" (dealer one-hot tables of two 9-bit digits, y < 256; 2 rounds).
    exp_method: str = "limit"
    reciprocal_iterations: int = 5  # Newton steps for 1/(softmax denominator), after range reduction
    softmax_clip: float = 0.0  # if > 0, scores below max - clip are dropped (MPC-friendly mask)
    inv_sqrt_iterations: int = 3  # Newton steps for RMSNorm's 1/sqrt(variance), after range reduction
    sigmoid_iterations: int = 3  # Newton steps for 1/(1 + exp(-|x|)) in SiLU
    # Initial guess of the Newton iterations on the reduced range: "chord" (the secant line) or
    # "minimax" (the linear guess with the least relative error: fewer steps for the same accuracy).
    initial_guess: str = "chord"
    # "newton", or "goldschmidt": the same iterates with independent products per step, and range
    # reductions' output scales applied in the round that scales the input (numerics/goldschmidt.py).
    iteration: str = "newton"
    # Range reductions compare with 2^(k * range_step): 2 (powers of 4, reduced range [1/4, 1)) or
    # 0.25 (quarter octaves, [2^-1/4, 1): the initial guess is good enough for one Newton step).
    range_step: float = 2.0
    # Secret comparisons: "crypten" (CrypTen's binary adder circuit, ~8 rounds) or "dealer" (the
    # dealer's one-hot digit tables, 1 + ceil(log2(digits)) rounds; protocols/numerics/digits.py).
    comparison: str = "crypten"
    # Digit width of the dealer comparison (5 or 10): 10 bits = 2 digits, 2 rounds and 80 B per
    # comparison; 5 bits = 4 digits, 3 rounds, 272 B, but 1/16 of a TTP dealer's table traffic
    # (2 * 2 * 2^10 vs 2 * 4 * 2^5 entries per comparison; with TFP the tables are never built).
    cmp_digit_bits: int = 10
    # Max / argmax tournaments: elements compared per group in one comparison layer ("arity" 2 is
    # the binary tree; 4 compares all pairs of 4 at once and picks the winner by a product tree).
    max_arity: int = 2
    # The formulas are in mpcache/core/approx.py (plaintext) and protocols/numerics/nonlinear.py (MPC).

    @classmethod
    def preset(cls, name: str) -> Approximations:
        """``exact``, ``v1`` or ``fast`` (see ``PRESETS``)."""
        if name not in PRESETS:
            raise UserError(f"unknown approximation preset {name!r} (choose {', '.join(PRESETS)})")
        return cls(**PRESETS[name])

    @property
    def name(self) -> str:
        """The preset these settings equal, else "custom"."""
        for key, values in PRESETS.items():
            if self == Approximations(**values):
                return key
        return "custom"


PRESETS: dict[str, dict] = {
    "exact": {},
    "v1": {"exact": False},
    # Chosen by `mpcache bench ops`: dealer comparisons and exp tables, grouped max, quarter-octave
    # range reductions with minimax guesses and one Newton step (max relative error 1.4e-5
    # reciprocal, 3.1e-6 inverse square root), two for sigmoid's 1/(1+u) (1.2e-5).
    "fast": {"exact": False, "comparison": "dealer", "initial_guess": "minimax", "range_step": 0.25,
             "reciprocal_iterations": 1, "inv_sqrt_iterations": 1, "sigmoid_iterations": 2,
             "max_arity": 8, "exp_method": "table", "iteration": "goldschmidt"},
}
# The preset every MPC path uses unless told otherwise (`--approx`): same accuracy as v1 in the
# plaintext evaluation, ~1/3 of its rounds per decode token.
MPC_DEFAULT = "fast"
# With a TTP dealer the comparison tables travel from the dealer: fast's 10-bit digits made the
# dealer of a SmolLM2 run (L=128) grow past 12 GB and be killed; 5-bit digits cut the tables 16-fold
# for one more round per comparison.
MPC_DEFAULT_TTP = "fast-lite"


def mpc_default(dealer: str) -> str:
    """The approximation preset an MPC run uses when none is named, by dealer."""
    return MPC_DEFAULT_TTP if dealer == "ttp" else MPC_DEFAULT

# fast with 5-bit comparison digits: one more round per comparison, far less TTP dealer traffic.
PRESETS["fast-lite"] = {**PRESETS["fast"], "cmp_digit_bits": 5}


class Backend:
    """Interface of the ops the model uses. Subclasses implement every method."""

    name = "abstract"

    # --- data movement -------------------------------------------------------------------------
    def weight(self, tensor: torch.Tensor, name: str = "") -> Tensor:
        """Make a model weight (owned by the server) usable by this backend; ``name`` is its HF name."""
        raise NotImplementedError

    def embed(self, token_ids: torch.Tensor | Tensor, table: Tensor) -> Tensor:
        """Rows of ``table`` for ``token_ids`` -> [T, hidden]."""
        raise NotImplementedError

    def cat(self, tensors: Sequence[Tensor], dim: int) -> Tensor:
        raise NotImplementedError

    # --- linear algebra ------------------------------------------------------------------------
    def linear(self, x: Tensor, weight: Tensor) -> Tensor:
        """``x @ weight.T`` with ``weight`` in HF layout [out, in]."""
        raise NotImplementedError

    def matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """Batched matmul of two (possibly secret) tensors."""
        raise NotImplementedError

    def matmul_t(self, a: Tensor, b: Tensor) -> Tensor:
        """``a @ b^T`` over the last two dims (attention scores against cached keys: under MPC the
        cached operand keeps its layout, so its mask is reused)."""
        return self.matmul(a, b.transpose(-1, -2))

    def mul(self, a: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError

    # --- reductions (policies) ------------------------------------------------------------------
    def sum(self, x: Tensor, dim: int, keepdim: bool = False) -> Tensor:
        """Sum over ``dim`` (a local op on shares; torch and CrypTen tensors share this method)."""
        return x.sum(dim, keepdim=keepdim)

    def amax(self, x: Tensor, dim: int, keepdim: bool = False) -> Tensor:
        """Maximum VALUES over ``dim`` (no indices/argmax), e.g. a cluster's per-channel max or a
        token's max attention over window rows. Under MPC: a tree of secret comparisons."""
        raise NotImplementedError

    def amin(self, x: Tensor, dim: int, keepdim: bool = False) -> Tensor:
        """Minimum VALUES over ``dim``; see :meth:`amax`."""
        raise NotImplementedError

    # --- non-linear ----------------------------------------------------------------------------
    def rms_norm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        raise NotImplementedError

    def silu(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def softmax(self, scores: Tensor, mask: torch.Tensor | None = None) -> Tensor:
        """Softmax over the last dim; ``mask`` (public bool, broadcastable) marks allowed entries."""
        raise NotImplementedError

    def rope(self, x: Tensor, cos: torch.Tensor, sin: torch.Tensor) -> Tensor:
        """Rotary embedding of x [H, T, d] with public cos/sin [T, d] (rotate-half convention)."""
        rotated = self.cat([x[..., x.shape[-1] // 2 :] * -1.0, x[..., : x.shape[-1] // 2]], dim=-1)
        return x * cos + rotated * sin

    # --- selection (policies) -----------------------------------------------------------------
    def topk(self, scores: Tensor, k: int, forced: torch.Tensor | None = None) -> Tensor:
        """Select the ``k`` largest entries of each row of ``scores`` [H, n]; ``k`` is public.

        Exactly k distinct items per row. Tie rule (both backends): equal scores, the lower index
        wins. ``forced``: a public bool mask [n] or [H, n] of items always selected, counted
        inside k (e.g. the attention-sink and newest clusters); at most k per row.

        Returns a *selection*: in plaintext a LongTensor of indices [H, k] in ascending order (so
        gathered tokens keep their cache order); under MPC a secret one-hot matrix [H, k, n] whose
        rows are in the same ascending position order.
        """
        raise NotImplementedError

    def gather(self, selection: Tensor, x: Tensor) -> Tensor:
        """Rows of ``x`` [H, n, m] picked by ``selection`` -> [H, k, m] (a one-hot matmul under MPC).

        To gather whole clusters of s tokens, view x as [H, n/s, s*d] first. A selection made for
        one row (H = 1, e.g. a layer-wide static eviction) applies to every head of ``x``. ``x``
        may be secret or public (e.g. a public bonus vector gathered along with secret scores).
        """
        raise NotImplementedError

    def select_clusters(self, selection: Tensor, x: Tensor, count: int, size: int, picked: int,
                        scores: Tensor | None = None, shift: Tensor | None = None):
        """The ``picked`` clusters of ``size`` tokens that ``selection`` chooses among the first
        ``count`` clusters of x [H, n, d], then every token after them (the tail). Here: the rows
        themselves; a backend may return :class:`~mpcache.core.selected.SelectedRows` instead, which the
        transformer attends through x's own mask (``mpcache.core.selected.attend``), reusing the
        policy's ``scores`` and softmax ``shift`` when given (see there)."""
        return materialize(self, SelectedRows(selection, x, count, size, picked))

    def scatter(self, selection: Tensor, x: Tensor, n: int) -> Tensor:
        """The transpose of :meth:`gather`: rows x [H, k, m] put at the positions ``selection``
        picks among n, zeros elsewhere -> [H, n, m]."""
        raise NotImplementedError

    def argmin(self, scores: Tensor) -> Tensor:
        """A selection of each row's minimum of ``scores`` [H, n] (the first one on ties):
        indices [H, 1] in plaintext, a secret one-hot [H, 1, n] under MPC (one tournament)."""
        raise NotImplementedError

    def drop(self, selection: Tensor, x: Tensor) -> Tensor:
        """``x`` [H, n, m] without the one row per head picked by ``selection`` (from ``argmin``),
        the others in order -> [H, n-1, m] (H2O's one-token eviction: a shift, not a top-k)."""
        raise NotImplementedError

    def compose(self, outer: Tensor, inner: Tensor, m: int) -> Tensor:
        """Two-level selection -> one: ``outer`` picks k1 of C clusters, ``inner`` picks k2 among the
        k1*m children of the picked clusters (in their gathered order). Returns the selection of
        those k2 children among all C*m children (ascending when both inputs are)."""
        raise NotImplementedError

    def fix(self, x: Tensor) -> Tensor:
        """Mark ``x`` (a cache rebuilt by eviction) as a fixed operand: under MPC its mask is opened
        once, here, so later products with it or its views open only the other operand."""
        return x

    def phase(self, name: str) -> AbstractContextManager:
        """Account everything inside to phase ``name`` (MPC; a no-op in plaintext)."""
        return nullcontext()

    # --- outputs -------------------------------------------------------------------------------
    def agree_stop(self, stop: bool) -> bool:
        """Make the client's stop decision (EOS seen) public: the number of tokens is public."""
        return stop

    def next_token(self, logits: Tensor) -> int:
        """Greedy next token id from the last row of ``logits``, revealed to the client only."""
        raise NotImplementedError

    def reveal(self, x: Tensor) -> torch.Tensor:
        """Plain value of ``x`` (to every party). Use only for public or deliberately leaked data."""
        raise NotImplementedError


class PlainBackend(Backend):
    """Plain torch. With ``Approximations(exact=False)`` it mimics the MPC numerics."""

    name = "plain"

    def __init__(self, approx: Approximations | None = None, dtype: torch.dtype = torch.float32):
        self.approx = approx or Approximations()
        self.dtype = dtype

    def weight(self, tensor: torch.Tensor, name: str = "") -> torch.Tensor:
        return tensor.to(self.dtype)

    def embed(self, token_ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return table[token_ids]

    def cat(self, tensors: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
        return torch.cat(list(tensors), dim=dim)

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x @ weight.T

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if not self.approx.exact:
            a = self.approx
            return approx.rms_norm(x, weight, eps, a.inv_sqrt_iterations, a.initial_guess, a.range_step)
        variance = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(variance + eps) * weight

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        if self.approx.exact:
            return torch.nn.functional.silu(x)
        a = self.approx
        return x * approx.sigmoid(x, a.exp_iterations, a.sigmoid_iterations, a.initial_guess,
                                  a.exp_method)

    def softmax(self, scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.approx.exact:
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            return torch.softmax(scores, dim=-1)
        a = self.approx
        return approx.softmax(scores, mask, a.exp_iterations, a.reciprocal_iterations, a.softmax_clip,
                              a.initial_guess, a.exp_method, a.range_step)

    def topk(self, scores: torch.Tensor, k: int, forced: torch.Tensor | None = None) -> torch.Tensor:
        check_topk(scores.shape, k, forced)
        key = scores.float()
        if forced is not None:
            key = torch.where(forced.to(torch.bool), torch.inf, key)
        order = torch.sort(-key, dim=-1, stable=True).indices  # stable: equal scores, lower index first
        return order[..., :k].sort(dim=-1).values

    def gather(self, selection: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if selection.shape[0] != x.shape[0]:
            selection = selection.expand(x.shape[0], -1)
        return torch.gather(x, 1, selection[..., None].expand(-1, -1, x.shape[-1]))

    def scatter(self, selection: torch.Tensor, x: torch.Tensor, n: int) -> torch.Tensor:
        selection = selection.expand(x.shape[0], -1)
        out = x.new_zeros(x.shape[0], n, x.shape[-1])
        return out.scatter(1, selection[..., None].expand(-1, -1, x.shape[-1]), x)

    def argmin(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.argmin(-1, keepdim=True)

    def drop(self, selection: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(x.shape[:2], dtype=torch.bool).scatter_(1, selection, False)
        return x[keep].reshape(x.shape[0], x.shape[1] - 1, *x.shape[2:])

    def compose(self, outer: torch.Tensor, inner: torch.Tensor, m: int) -> torch.Tensor:
        return torch.gather(outer, 1, inner // m) * m + inner % m

    def amax(self, x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
        return x.amax(dim, keepdim=keepdim)

    def amin(self, x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
        return x.amin(dim, keepdim=keepdim)

    def next_token(self, logits: torch.Tensor) -> int:
        return int(torch.argmax(logits[-1]).item())

    def reveal(self, x: torch.Tensor) -> torch.Tensor:
        return x


def check_topk(shape, k: int, forced: torch.Tensor | None) -> None:
    """Shapes and counts of a top-k call (public), checked the same way by both backends."""
    if len(shape) != 2:
        raise UserError(f"topk takes scores [H, n], got shape {tuple(shape)}")
    n = shape[-1]
    if not 1 <= k <= n:
        raise UserError(f"topk: k = {k} must be in 1..{n} (the number of items)")
    if forced is not None:
        rows_ok = forced.dim() == 1 or (forced.dim() == 2 and forced.shape[0] in (1, shape[0]))
        if forced.shape[-1] != n or not rows_ok:
            raise UserError(f"topk: forced mask of shape {tuple(forced.shape)} for scores {tuple(shape)}")
        most = int(forced.to(torch.long).sum(-1).max())
        if most > k:
            raise UserError(f"topk: {most} forced items do not fit in k = {k}")
