"""Kernel benchmark: ``python -m kernels.bench [--json FILE] [--quick]``.

Per kernel and size (context 4k-128k, batch 1-32, SmolLM2's and a 7B LLaMA's heads/dims): time,
achieved GB/s (bytes the kernel must move / time), the fraction of the measured copy bandwidth
(roofline), and the speed-up over the torch reference and over fp16 ``scaled_dot_product_attention``
decode on the full fp16 cache. Needs a CUDA GPU; without one it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels.attention_ref import mixed_decode_attention_ref
from kernels.attention_triton import mixed_decode_attention_triton
from kernels.quant_ref import quantize_ref
from kernels.quant_triton import quantize_triton
from kernels.signature_ref import hamming_ref, median_thresholds, pack_signatures_ref
from kernels.signature_triton import hamming_triton, pack_signatures_triton


@dataclass(frozen=True)
class Shape:
    name: str
    q_heads: int
    kv_heads: int
    head_dim: int


SHAPES = [Shape("smollm2-135m", 9, 3, 64), Shape("llama-7b", 32, 32, 128)]
CONTEXTS = [4096, 16384, 32768, 131072]
BATCHES = [1, 8, 32]
HIGH_RATIO, BITS = 0.2, (4, 2)
MEMORY_FRACTION = 0.6  # skip sizes whose inputs would need more of the GPU's memory


def timeit(fn: Callable[[], object], device: torch.device, reps: int | None = None) -> float:
    """Median seconds per call (CUDA events on a GPU, wall clock elsewhere)."""
    reps = reps or (20 if device.type == "cuda" else 2)
    fn()  # warm-up / compile
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def copy_bandwidth(device: torch.device, size: int = 256 * 2**20) -> float:
    """Measured device-to-device copy bandwidth, bytes/s (read + write), the roofline's ceiling."""
    x = torch.empty(size, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    return 2 * x.numel() / timeit(lambda: y.copy_(x), device)


def attention_case(shape: Shape, batch: int, ctx: int, bits: int, device: torch.device) -> dict:
    d, hkv = shape.head_dim, shape.kv_heads
    n_hi = int(HIGH_RATIO * ctx)
    n_lo = ctx - n_hi
    q = torch.randn(batch, shape.q_heads, d, device=device, dtype=torch.float16)
    k_hi = torch.randn(batch, hkv, n_hi, d, device=device, dtype=torch.float16)
    v_hi = torch.randn_like(k_hi)
    k_lo = quantize_triton(torch.randn(batch, hkv, n_lo, d, device=device, dtype=torch.float16), bits, d // 2)
    v_lo = quantize_triton(torch.randn(batch, hkv, n_lo, d, device=device, dtype=torch.float16), bits, d // 2)
    moved = sum(t.numel() * t.element_size() for t in (q, k_hi, v_hi, q)) + k_lo.nbytes + v_lo.nbytes
    kernel = timeit(lambda: mixed_decode_attention_triton(q, k_hi, v_hi, k_lo, v_lo), device)
    reference = optional(lambda: timeit(
        lambda: mixed_decode_attention_ref(q, k_hi, v_hi, k_lo, v_lo), device, 3))
    full_k = torch.randn(batch, hkv, ctx, d, device=device, dtype=torch.float16)
    full_v = torch.randn_like(full_k)
    sdpa = timeit(lambda: torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], full_k, full_v, enable_gqa=hkv != shape.q_heads), device)
    return {"kernel": f"mixed_attention_int{bits}", "seconds": kernel, "bytes": moved,
            "reference_seconds": reference, "sdpa_fp16_seconds": sdpa,
            "sdpa_bytes": 2 * full_k.numel() * 2}


def quantize_case(shape: Shape, batch: int, ctx: int, bits: int, device: torch.device) -> dict:
    x = torch.randn(batch, shape.kv_heads, ctx, shape.head_dim, device=device, dtype=torch.float16)
    group = shape.head_dim // 2
    out = quantize_triton(x, bits, group)
    return {"kernel": f"quantize_int{bits}",
            "seconds": timeit(lambda: quantize_triton(x, bits, group), device),
            "bytes": x.numel() * 2 + out.nbytes,
            "reference_seconds": optional(lambda: timeit(lambda: quantize_ref(x, bits, group), device, 3))}


def signature_case(shape: Shape, batch: int, ctx: int, device: torch.device) -> dict:
    scores = torch.rand(shape.q_heads, batch * ctx, device=device)
    thr = median_thresholds(scores)
    anchor = torch.zeros((shape.q_heads + 31) // 32, dtype=torch.int32, device=device)

    def kernel():
        return hamming_triton(pack_signatures_triton(scores, thr), anchor)

    def reference():
        return hamming_ref(pack_signatures_ref(scores, thr), anchor)

    moved = scores.numel() * 4 + batch * ctx * (anchor.numel() * 4 * 2 + 4)
    return {"kernel": "signature+hamming", "seconds": timeit(kernel, device), "bytes": moved,
            "reference_seconds": optional(lambda: timeit(reference, device, 3))}


def fits(shape: Shape, batch: int, ctx: int, device: torch.device) -> bool:
    need = 4 * batch * shape.kv_heads * ctx * shape.head_dim * 2  # full fp16 K/V for SDPA, twice over
    return need < MEMORY_FRACTION * torch.cuda.get_device_properties(device).total_memory


def optional(fn: Callable[[], float]) -> float | None:
    """A reference timing, or None when the (memory-hungry) torch reference does not fit."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def run(device: torch.device, contexts, batches, shapes=SHAPES, copy_size: int = 256 * 2**20) -> list[dict]:
    peak = copy_bandwidth(device, copy_size)
    records = []
    for shape in shapes:
        for batch in batches:
            for ctx in contexts:
                if device.type == "cuda" and not fits(shape, batch, ctx, device):
                    continue
                cases = [attention_case(shape, batch, ctx, b, device) for b in BITS]
                cases.append(quantize_case(shape, batch, ctx, 4, device))
                cases.append(signature_case(shape, batch, ctx, device))
                for rec in cases:
                    rec.update(shape=shape.name, batch=batch, context=ctx,
                               gbps=rec["bytes"] / rec["seconds"] / 1e9,
                               roofline=rec["bytes"] / peak / rec["seconds"],
                               vs_reference=(rec["reference_seconds"] or float("nan")) / rec["seconds"])
                    if "sdpa_fp16_seconds" in rec:
                        rec["vs_sdpa_fp16"] = rec["sdpa_fp16_seconds"] / rec["seconds"]
                    records.append(rec)
                    print(format_row(rec), flush=True)
    return records


def format_row(r: dict) -> str:
    sdpa = f"  x{r['vs_sdpa_fp16']:.2f} vs sdpa" if "vs_sdpa_fp16" in r else ""
    return (f"{r['shape']:>13} b={r['batch']:<2} ctx={r['context']:<6} {r['kernel']:<22} "
            f"{r['seconds'] * 1e6:9.1f} us {r['gbps']:7.1f} GB/s ({r['roofline']:.0%} of copy bw)  "
            f"x{r['vs_reference']:.1f} vs torch ref{sdpa}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="append one JSON record per kernel and size to this file")
    parser.add_argument("--quick", action="store_true", help="contexts 4k and 32k, batches 1 and 8 only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels.bench: no CUDA GPU available; the Triton kernels are benchmarked on a GPU only "
              "(their correctness is tested on CPU with TRITON_INTERPRET=1). Nothing measured.")
        return 0
    device = torch.device("cuda")
    contexts, batches = ([4096, 32768], [1, 8]) if args.quick else (CONTEXTS, BATCHES)
    print(f"device: {torch.cuda.get_device_name(device)}")
    records = run(device, contexts, batches)
    if args.json:
        with open(args.json, "a") as f:
            for rec in records:
                f.write(json.dumps({**rec, "device": torch.cuda.get_device_name(device)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
