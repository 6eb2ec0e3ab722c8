"""The one dispatch point: references for CPU tensors, Triton kernels for CUDA (or when forced)."""

import pytest
import torch
from kernel_helpers import needs_cuda

from kernels import dispatch
from kernels.quant_ref import quantize_ref


@pytest.fixture
def spy(monkeypatch):
    """Record which implementation each dispatch call took."""
    import kernels.attention_triton as att
    import kernels.quant_triton as qt
    import kernels.signature_triton as sig

    calls = []
    targets = ((qt, "quantize_triton"), (qt, "dequantize_triton"), (att, "mixed_decode_attention_triton"),
               (sig, "pack_signatures_triton"), (sig, "hamming_triton"))
    for module, name in targets:
        real = getattr(module, name)

        def wrapped(*a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(*a, **k)

        monkeypatch.setattr(module, name, wrapped)
    return calls


def exercise(device):
    x = torch.randn(2, 3, 40, 64, device=device)
    q = dispatch.quantize(x, 4, 32)
    dispatch.dequantize(q)
    dispatch.mixed_decode_attention(torch.randn(2, 6, 64, device=device), x, x, q, q)
    scores = torch.rand(9, 50, device=device)
    sig = dispatch.pack_signatures(scores, scores.median(-1).values)
    dispatch.hamming(sig, torch.zeros(1, dtype=torch.int32, device=device))


def test_cpu_uses_references(spy, monkeypatch):
    monkeypatch.delenv("MPCACHE_KERNELS", raising=False)
    exercise("cpu")
    assert spy == []


def test_forced_triton_on_cpu_matches(spy, monkeypatch):
    monkeypatch.setenv("MPCACHE_KERNELS", "triton")
    exercise("cpu")
    assert len(spy) == 5
    x = torch.randn(7, 64)
    assert torch.equal(dispatch.quantize(x, 3, 16).packed, quantize_ref(x, 3, 16).packed)


def test_unsupported_shapes_fall_back(spy, monkeypatch):
    monkeypatch.setenv("MPCACHE_KERNELS", "triton")
    x = torch.randn(5, 48)  # not a power of two: the reference packs it
    assert torch.equal(dispatch.quantize(x, 4, 16).packed, quantize_ref(x, 4, 16).packed)
    assert spy == []


@needs_cuda
@pytest.mark.gpu
def test_cuda_uses_kernels(spy, monkeypatch):
    monkeypatch.delenv("MPCACHE_KERNELS", raising=False)
    exercise("cuda")
    assert len(spy) == 5
