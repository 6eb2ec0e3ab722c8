"""Signature packing and popcount Hamming distance (Triton) vs the PyTorch reference."""

import pytest
import torch
from kernel_helpers import needs_cuda, poisoned_empty  # noqa: F401

from kernels.signature_ref import hamming_ref, median_thresholds, pack_signatures_ref
from kernels.signature_triton import hamming_triton, pack_signatures_triton

# (heads, tokens): 9 = SmolLM2's query heads, 32 = 7B LLaMA's; tokens not a multiple of the block
SHAPES = [(9, 1), (9, 200), (32, 129), (40, 1000), (70, 77)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads,tokens", SHAPES)
def test_pack_matches_ref(poisoned_empty, heads, tokens, dtype):  # noqa: F811
    scores = torch.rand(heads, tokens).to(dtype)
    thr = median_thresholds(scores)
    out = pack_signatures_triton(scores, thr)
    assert torch.equal(out, pack_signatures_ref(scores, thr))


def test_pack_bits_mean_top_half():
    scores = torch.rand(9, 101)
    sig = pack_signatures_ref(scores, median_thresholds(scores))
    for h in range(9):
        bits = (sig[:, 0].to(torch.int64) >> h) & 1
        assert bits.sum() == 50  # strictly above the lower median of 101 values
        assert torch.equal(bits.bool(), scores[h] > scores[h].median())


@pytest.mark.parametrize("heads,tokens", SHAPES)
def test_hamming_matches_ref(poisoned_empty, heads, tokens):  # noqa: F811
    scores = torch.randn(heads, tokens)
    sig = pack_signatures_ref(scores, median_thresholds(scores))
    anchor = torch.randint(-(2**31), 2**31 - 1, (sig.shape[1],), dtype=torch.int32)
    out = hamming_triton(sig, anchor)
    assert torch.equal(out, hamming_ref(sig, anchor))


def test_hamming_ref_counts_bits():
    sig = torch.tensor([[0], [1], [-1], [0x0F0F]], dtype=torch.int32)
    assert hamming_ref(sig, torch.zeros(1, dtype=torch.int32)).tolist() == [0, 1, 32, 8]


@needs_cuda
@pytest.mark.gpu
def test_signature_kernels_on_gpu():
    scores = torch.rand(32, 100_003, device="cuda")
    thr = median_thresholds(scores)
    sig = pack_signatures_triton(scores, thr)
    assert torch.equal(sig, pack_signatures_ref(scores, thr))
    anchor = torch.tensor([0x55555555], dtype=torch.int32, device="cuda")
    assert torch.equal(hamming_triton(sig, anchor), hamming_ref(sig, anchor))


def test_bench_without_gpu_says_so_and_exits_0():
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run for real")
    proc = subprocess.run([sys.executable, "-m", "kernels.bench", "--quick"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "no CUDA GPU" in proc.stdout


def test_bench_cases_run_on_cpu_interpreter():
    """The benchmark's measuring code runs end to end (tiny sizes, CPU, interpreted kernels)."""
    from kernels import bench

    shape = bench.Shape("tiny", 4, 2, 32)
    records = bench.run(torch.device("cpu"), [70], [1], [shape], copy_size=2**20)
    kinds = {r["kernel"] for r in records}
    assert kinds == {"mixed_attention_int4", "mixed_attention_int2", "quantize_int4", "signature+hamming"}
    assert all(r["seconds"] > 0 and r["gbps"] > 0 for r in records)
