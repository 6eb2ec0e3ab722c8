"""Shared helpers for the kernel tests: error measure and poisoned output allocation."""

from __future__ import annotations

import pytest
import torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOL = {torch.float32: 1e-3, torch.float16: 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    assert not torch.isnan(out).any(), "NaN in kernel output (an element left unwritten?)"
    return float((out - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


@pytest.fixture
def poisoned_empty(monkeypatch):
    """Make torch.empty/empty_like return NaN (floats) or a sentinel (ints): unwritten outputs show."""
    real_empty, real_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        else:
            t.fill_(-1234567)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(real_like(*a, **k)))
