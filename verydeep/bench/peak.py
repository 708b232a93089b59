"""A matrix-product peak measured in the same run: the ceiling achieved TFLOP/s is held to.

bf16 on CUDA (the precision training runs in), float32 on CPU. The figure is the median of a
few timed products after warm-up, on random data (zeros run faster on some GPUs).
"""

from __future__ import annotations

import statistics
import time

import torch

from verydeep.bench.common import synchronize


def matmul_peak(device: torch.device, *, n: int | None = None, dtype: torch.dtype | None = None,
                reps: int = 10, repeats: int = 3) -> dict:
    """TFLOP/s of an n x n x n matrix product (2 n^3 FLOP)."""
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if n is None:
        n = 8192 if device.type == "cuda" else 1024
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(3):
        torch.mm(a, b)
    synchronize(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        synchronize(device)
        rates.append(2 * n**3 * reps / (time.perf_counter() - t0) / 1e12)
    return {"tflops": statistics.median(rates), "n": n, "dtype": str(dtype).replace("torch.", ""),
            "samples": rates}
