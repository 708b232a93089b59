"""What every benchmark shares: devices, timing, peak memory, FLOP accounting, results.

A figure is the median over ``repeats`` timed windows of ``steps`` steps each, after
``warmup`` untimed steps; the device is synchronised at the window's edges only, so the
timed loop itself runs as it would in training.
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
    samples: list[float] = field(default_factory=list)  # images/s of every timed window
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA, full precision on CPU (as the training loop decides)."""
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "none"
    try:
        return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    except KeyError:
        raise ValueError(f"amp must be auto, none, bf16 or fp16, got {mode!r}") from None


@contextlib.contextmanager
def backend_flags(device: torch.device, *, benchmark: bool, tf32: bool):
    """cuDNN/matmul flags are process-global: set them per variant and put them back."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cuda.matmul.allow_tf32 = tf32
    if tf32:
        torch.backends.cudnn.allow_tf32 = True
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
               repeats: int, images_per_step: int) -> tuple[float, float, list[float]]:
    """Run ``step`` ``warmup`` times, then ``repeats`` windows of ``steps``; returns
    (median images/s, median ms/step, images/s of each window)."""
    if steps < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"steps and repeats must be >= 1 and warmup >= 0, got {steps}, {repeats}, {warmup}")
    for _ in range(warmup):
        step()
    synchronize(device)
    rates, ms = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        dt = time.perf_counter() - t0
        rates.append(steps * images_per_step / dt)
        ms.append(1000 * dt / steps)
    return statistics.median(rates), statistics.median(ms), rates


def training_tflops(forward_macs: int, images_per_s: float) -> float:
    """Achieved TFLOP/s of training: forward + backward = 3 forward passes, 2 FLOP per MAC."""
    return 3 * 2 * forward_macs * images_per_s / 1e12


def inference_tflops(forward_macs: int, images_per_s: float) -> float:
    return 2 * forward_macs * images_per_s / 1e12


def forward_macs(model: torch.nn.Module, image_size: int | tuple[int, int]) -> int:
    """Multiply-accumulates of one forward pass of one image (convs and FC layers)."""
    from torch import nn

    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
        elif isinstance(m, nn.Linear):
            total += out[0].numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, h, w, device=p.device, dtype=p.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
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


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
