"""The runtime policy: which device, which AMP dtype, which memory format, one autocast.

Decided once per process from the run's settings and passed to training, validation,
evaluation and the benchmarks, so a run's ``amp: none`` means fp32 everywhere it computes.

- device ``auto``: CUDA when torch sees it (this process's local-rank GPU), else CPU;
  ``cuda:N`` names one GPU.
- AMP ``auto``: bf16 on CUDA (no loss scaling needed), full precision on CPU, where autocast
  is slower than fp32 for convolutions.
- TF32 (CUDA): on, unless the run asks for ``amp: none``, which is the exact fp32 run (the
  paper's precision: Caffe in fp32): no autocast and no TF32 in matmuls or convolutions.
  ``Runtime.precision`` names the choice; training, evaluation and ``reproduce`` state it.
- channels_last ``None`` (auto): :data:`CHANNELS_LAST_BY_DEVICE`, chosen from measurement:
  on CUDA, where cuDNN's NHWC kernels are the fast ones for convolutions under AMP, and on
  CPU, where oneDNN's NHWC convolutions measured faster for every net we train there
  (BENCHMARKS.md, "Memory format on CPU": the demo's and the mini profile's nets, training
  step and evaluation alike). ``train.channels_last: false`` keeps NCHW.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from verydeep.training_config import AMP_MODES
# channels_last's automatic choice per device type (measured: see the module doc)
CHANNELS_LAST_BY_DEVICE = {"cuda": True, "cpu": True}


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` (this process's local-rank GPU) | ``cuda:N``."""
    if isinstance(name, torch.device):
        return name
    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch sees no CUDA device")
    count = torch.cuda.device_count()
    index = local_rank % count if device.index is None else device.index
    if index >= count:
        raise ValueError(f"device {name!r}: only {count} CUDA device(s) visible")
    return torch.device("cuda", index)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device`` (None: full precision)."""
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "none"
    try:
        return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    except KeyError:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {mode!r}") from None


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """The autocast context for ``amp_dtype`` (a no-op context for full precision)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


AMP_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def describe_precision(amp_dtype: torch.dtype | None, device_type: str, tf32: bool) -> str:
    """E.g. "bf16 autocast (fp32 weights), TF32 on" or "fp32, TF32 off" (TF32 named on CUDA only)."""
    text = "fp32" if amp_dtype is None else f"{AMP_NAMES[amp_dtype]} autocast (fp32 weights)"
    return text + (", TF32 " + ("on" if tf32 else "off") if device_type == "cuda" else "")


def precision_of(amp: str, device_type: str) -> str:
    """The precision a run with ``amp`` gets on a ``device_type`` device, without building one."""
    return describe_precision(resolve_amp(amp, torch.device(device_type)), device_type,
                              device_type == "cuda" and tf32_allowed(amp))


def tf32_allowed(amp: str) -> bool:
    """TF32 in matmuls and convolutions, unless the run asked for exact fp32 (``amp: none``)."""
    return amp != "none"


def set_tf32(device: torch.device, allowed: bool) -> None:
    """TF32 on or off for CUDA matmuls and cuDNN convolutions (nothing to do on CPU)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = allowed
        torch.backends.cudnn.allow_tf32 = allowed  # torch's default is True: off needs saying


def configure_backends(device: torch.device, cudnn_benchmark: bool = True, tf32: bool = True) -> None:
    """cuDNN autotuning and TF32 on CUDA (what torchvision's reference script enables); TF32
    off for the exact fp32 run."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
        set_tf32(device, tf32)


@dataclass(frozen=True)
class Runtime:
    """Device, AMP dtype and memory format of one process, built by :func:`build_runtime`."""

    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    tf32: bool = False  # TF32 allowed on CUDA (see ``tf32_allowed``)

    def precision(self) -> str:
        """The arithmetic this runtime computes in, in words (logged and written to reports)."""
        return describe_precision(self.amp_dtype, self.device.type, self.tf32)

    @property
    def exact_fp32(self) -> bool:
        """Full fp32 everywhere: no autocast, and on CUDA no TF32 (the paper's arithmetic)."""
        return self.amp_dtype is None and not (self.device.type == "cuda" and self.tf32)

    def apply_tf32(self) -> None:
        """Set this process's TF32 flags to this runtime's choice."""
        set_tf32(self.device, self.tf32)

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on this device, in this memory format (in place, returned)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def batch_dtype(self, *, whole_model: bool = True) -> torch.dtype:
        """The dtype training batches come in: bf16 when the step autocasts to bf16 on CUDA
        (the values the first convolution would cast them to, at half the bytes to move), for
        a process that runs the whole model (data parallelism); float32 otherwise (pipeline and
        tensor-parallel stages hand on activations in the dtype their input has)."""
        if whole_model and self.device.type == "cuda" and self.amp_dtype == torch.bfloat16:
            return torch.bfloat16
        return torch.float32

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on this device, in this memory format."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def build_runtime(device: str | torch.device | None = "auto", amp: str = "auto",
                  channels_last: bool | None = None, local_rank: int = 0) -> Runtime:
    """The policy for one process from the run's ``device``, ``amp`` and ``channels_last``."""
    dev = resolve_device(device, local_rank)
    cl = CHANNELS_LAST_BY_DEVICE.get(dev.type, False) if channels_last is None else bool(channels_last)
    return Runtime(device=dev, amp_dtype=resolve_amp(amp, dev), channels_last=cl,
                   tf32=dev.type == "cuda" and tf32_allowed(amp))
