"""What every benchmark shares: devices, timing, peak memory, FLOP accounting, results.

A figure is the median over ``repeats`` timed windows of at least ``steps`` steps and at least
``min_seconds`` each (the GPU run's windows last 5 s or more: shorter ones measure the clock's
and the first kernels' noise), after ``warmup`` untimed steps; the device is synchronised at the
window's edges only, so the timed loop itself runs as it would in training.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from verydeep.models.complexity import forward_macs  # noqa: F401  (the benchmarks' FLOP accounting)
from verydeep.runtime import resolve_amp as amp_dtype  # noqa: F401  (one AMP policy for runs and benchmarks)
from verydeep.runtime import resolve_device  # noqa: F401


@dataclass
class BenchResult:
    """One measured figure: a named variant of one benchmark."""

    bench: str  # train | e2e | eval | data
    variant: str  # e.g. "reference", "ours", "ours+compile", "dense Q=384"
    images_per_s: float
    ms_per_step: float
    batch_size: int
    peak_memory_mb: float | None = None
    tflops: float | None = None  # achieved, from the model's MACs
    peak_fraction: float | None = None  # tflops / matmul peak measured in the same run
    ratio: float | None = None  # ours / reference (images/s), where a reference exists
    reference: str | None = None  # the variant this one is compared with
    references: list[str] = field(default_factory=list)  # every reference it is compared with
    ratios: dict[str, float] = field(default_factory=dict)  # ours / each of ``references``
    samples: list[float] = field(default_factory=list)  # images/s of every timed window
    drift: float | None = None  # a reference timed again after the others: its second figure / its first
    nonfinite_losses: int | None = None  # steps whose loss was inf/NaN (read once, after timing)
    profile: dict | None = None  # share of step time per kind of work (``verydeep.bench.step_profile``)
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def backend_flags(device: torch.device, *, benchmark: bool, tf32: bool):
    """cuDNN/matmul flags are process-global: set them per variant and put them back (TF32 for
    matmuls and convolutions alike, so ``tf32=False`` is full fp32 on both)."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32  # both, whichever way: one setting for every variant
    try:
        yield
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- peak memory ----------------------------------------------------------------------------
# CUDA: the caching allocator's high-water mark. CPU: the process's resident-set high-water
# mark (VmHWM), which Linux lets a process reset (clear_refs 5) so each variant gets its own;
# elsewhere ru_maxrss, the peak since the process started.

def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if platform.system() == "Darwin" else rss / 1024


# --- timing ---------------------------------------------------------------------------------

def time_steps(step: Callable[[], object], *, device: torch.device, steps: int, warmup: int,
               repeats: int, images_per_step: int, min_seconds: float = 0.0,
               max_steps: int | None = None) -> tuple[float, float, list[float]]:
    """Run ``step`` ``warmup`` times, then ``repeats`` windows of ``steps`` steps, each window
    extended step by step until ``min_seconds`` have passed on the host clock (at most
    ``max_steps``: a loader's finite pass); returns (median images/s, median ms/step, images/s
    of each window)."""
    if steps < 1 or repeats < 1 or warmup < 0 or min_seconds < 0:
        raise ValueError(f"steps and repeats must be >= 1, warmup and min_seconds >= 0, got {steps}, {repeats}, "
                         f"{warmup}, {min_seconds}")
    for _ in range(warmup):
        step()
    synchronize(device)
    rates, ms = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = 0
        while done < steps or (time.perf_counter() - t0 < min_seconds and (max_steps is None or done < max_steps)):
            step()
            done += 1
        synchronize(device)
        dt = time.perf_counter() - t0
        rates.append(done * images_per_step / dt)
        ms.append(1000 * dt / done)
    return statistics.median(rates), statistics.median(ms), rates


def spread(samples: list[float]) -> str:
    """min-max of ``samples`` around their median, as a table cell ("±x%")."""
    if len(samples) < 2:
        return ""
    mid = statistics.median(samples)
    return f"{100 * (max(samples) - min(samples)) / 2 / mid:.0f}%" if mid else ""


def training_tflops(macs: int, images_per_s: float) -> float:
    """Achieved TFLOP/s of training: forward + backward = 3 forward passes, 2 FLOP per MAC."""
    return 3 * 2 * macs * images_per_s / 1e12


def inference_tflops(macs: int, images_per_s: float) -> float:
    return 2 * macs * images_per_s / 1e12


def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - a dependency
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
