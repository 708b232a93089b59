"""Where a training step's time goes: a short ``torch.profiler`` run summarised by kind of work.

    profile = step_profile(step, device, steps=10)

Ten steps under the profiler (after one unprofiled), each operator's *self* time (the device's
on CUDA, the host's on a CPU) put in one of :data:`KINDS` by its name and by whether it ran
inside the optimiser's step (``Optimizer.step#...`` record, which torch.optim emits):

- ``convolution``: forward and backward convolutions (``aten::*convolution*``, cuDNN, oneDNN);
- ``matmul``: the FC layers (``mm``, ``addmm``, ``linear``, ``bmm``);
- ``optimiser``: everything inside the optimiser's step (fused, foreach or per-parameter);
- ``copies``: copies and layout changes (``copy_``, ``to``, ``contiguous``, ``clone``, memcpy);
- ``elementwise``: the other aten operators (ReLU, batch norm, pooling, loss, fills, adds).
- ``other``: what is none of those (the profiler's own records, Python-side work).

Shares sum to 1; ``ms_per_step`` is the profiled time per step (profiling slows a step, so
it is for proportions, not throughput).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch

from verydeep.bench.common import synchronize

KINDS = ("convolution", "matmul", "elementwise", "copies", "optimiser", "other")
_CONV = ("conv", "cudnn", "mkldnn_convolution")
_MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")
_COPIES = ("aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone", "memcpy",
           "aten::empty_strided")


def kind_of(name: str, in_optimiser: bool) -> str:
    """The kind (:data:`KINDS`) of an operator called ``name``."""
    low = name.lower()
    if in_optimiser or "optimizer.step" in low or "_fused_sgd" in low or "_fused_adam" in low:
        return "optimiser"
    if any(k in low for k in _CONV):
        return "convolution"
    if low in _MATMUL or "gemm" in low:
        return "matmul"
    if low in _COPIES or "memcpy" in low:
        return "copies"
    if low.startswith("aten::"):
        return "elementwise"
    return "other"


def _self_time(event, device: torch.device) -> float:
    if device.type == "cuda":  # torch >= 2.4 says device; older builds say cuda
        for attr in ("self_device_time_total", "self_cuda_time_total"):
            value = getattr(event, attr, None)
            if value is not None:
                return float(value)
        return 0.0
    return float(event.self_cpu_time_total)


def _in_optimiser(event) -> bool:
    parent = getattr(event, "cpu_parent", None)
    while parent is not None:
        if "optimizer.step" in parent.name.lower():
            return True
        parent = getattr(parent, "cpu_parent", None)
    return False


def summarise(events, device: torch.device, steps: int) -> dict:
    """Shares of self time per kind over profiler ``events`` (``prof.events()``), and the top ops."""
    per_kind: dict[str, float] = defaultdict(float)
    per_op: dict[str, float] = defaultdict(float)
    from torch.autograd import DeviceType

    for event in events:
        if getattr(event, "device_type", DeviceType.CPU) != DeviceType.CPU:
            continue  # a kernel: its time is in its operator's self device time
        t = _self_time(event, device)
        if t <= 0:
            continue
        kind = kind_of(event.name, _in_optimiser(event))
        per_kind[kind] += t
        per_op[event.name] += t
    total = sum(per_kind.values())
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:6]
    return {"shares": {k: round(per_kind[k] / total, 4) if total else 0.0 for k in KINDS},
            "ms_per_step": round(total / 1000 / max(1, steps), 3),
            "top": [{"op": name, "share": round(t / total, 4)} for name, t in top] if total else [],
            "steps": steps, "clock": "device" if device.type == "cuda" else "host"}


def step_profile(step: Callable[[], object], device: torch.device, steps: int = 10) -> dict:
    """:func:`summarise` of ``steps`` calls of ``step`` (after one unprofiled call)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    return summarise(prof.events(), device, steps)


def profile_line(profile: dict) -> str:
    """One line: each kind's share, largest first."""
    shares = sorted(profile["shares"].items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:.0%}" for k, v in shares if v > 0) + \
        f" ({profile['ms_per_step']:.1f} ms/step profiled, {profile['clock']} time)"
