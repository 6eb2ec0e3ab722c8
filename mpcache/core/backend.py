"""The Backend seam: every tensor op the transformer and the policies need.

The model and the policies are written once against :class:`Backend`. ``PlainBackend`` runs them on
ordinary torch tensors; the MPC backend (``protocols.mpc.backend``) runs them on CrypTen secret shares.
Shapes are always public; values may be secret. Public constants (masks, RoPE tables, scalars)
are plain torch tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from mpcache.core import approx
from mpcache.core.approximations import Approximations
from mpcache.core.errors import UserError
from mpcache.core.selected import Outer, SelectedRows, materialize

Tensor = Any  # torch.Tensor in plaintext, a CrypTen tensor under MPC




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
                        scores: Tensor | None = None, shift: Tensor | None = None,
                        outer: Outer | None = None):
        """The ``picked`` clusters of ``size`` tokens that ``selection`` chooses among the first
        ``count`` clusters of x [H, n, d], then every token after them (the tail). Here: the rows
        themselves; a backend may return :class:`~mpcache.core.selected.SelectedRows` instead, which the
        transformer attends through x's own mask (``mpcache.core.selected.attend``), reusing the
        policy's ``scores`` and softmax ``shift`` when given (see there). ``outer``: ``selection``
        picks among the children of the parents ``outer`` picked (here composed into one selection)."""
        if outer is not None:
            selection = self.compose(outer.selection, selection, outer.size // size)
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
