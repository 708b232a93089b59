"""Training-step throughput on synthetic tensors: the model and the step alone, no data loading.

Variants (``variants``, comma-separated):

- ``reference``: torchvision's VGG class and a plain AMP loop (``verydeep.bench.reference``).
- ``ours``: the body of ``verydeep.train.engine``'s loop as it ships: our VGG behind the
  single-process :class:`~verydeep.parallel.strategy.DataParallel` strategy, the loop's
  ``_forward_backward``, ``build_optimizer``, the per-step learning-rate set and dropout seed,
  channels_last and cudnn.benchmark on CUDA, and the per-step finiteness check of the loss.
- ``ours+OPT[+OPT...]``: the same with changes the loop might adopt, to measure them first:
  ``compile`` (torch.compile of the model), ``fused`` (SGD's fused CUDA kernel instead of
  foreach), ``nosync`` (no per-step host read of the loss: the finiteness check deferred to the
  logging step), ``slices`` (a bare micro-batch loop over the model instead of the strategy
  layer, to measure what the parallel-strategy interface costs a single process),
  ``graphs`` (the whole step captured once in a CUDA graph and replayed; implies nosync and
  slices, CUDA only), ``cl`` / ``nocl`` (channels_last on / off).

Both sides see the same shapes, classes and precision; inputs already sit on the device.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import statistics
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from verydeep.bench.common import (
    backend_flags,
    BenchResult,
    amp_dtype,
    forward_macs,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
    time_steps,
    training_tflops,
)

OPTIONS = ("compile", "fused", "nosync", "slices", "graphs", "cl", "nocl")


@dataclass
class TrainBenchConfig:
    model: str = "vgg16"
    width: float = 1 / 16
    image_size: int = 64
    batch_size: int = 16
    num_classes: int = 1000
    steps: int = 5
    warmup: int = 2
    repeats: int = 3
    device: str = "auto"
    amp: str = "auto"  # auto: bf16 on CUDA, none on CPU
    accum: int = 1  # micro-batches per step (gradient accumulation)
    variants: str = "reference,ours"
    seed: int = 0
    # None: on CPU, where other processes share the cores, each variant is rebuilt and timed
    # once per round, ``repeats`` rounds, so load that comes and goes hits every variant alike;
    # on CUDA each variant is built once and timed ``repeats`` windows in a row.
    interleave: bool | None = None

    @classmethod
    def for_gpu(cls, **overrides) -> "TrainBenchConfig":
        """The paper's setting: VGG16 at 224, batch 256."""
        return replace(cls(width=1.0, image_size=224, batch_size=256, steps=20, warmup=5, repeats=3,
                           device="cuda"), **overrides)


def parse_variant(name: str) -> tuple[str, set[str]]:
    base, *opts = name.strip().split("+")
    if base not in ("ours", "reference"):
        raise ValueError(f"unknown variant {name!r}: 'reference', 'ours' or 'ours+OPTION' ({', '.join(OPTIONS)})")
    unknown = set(opts) - set(OPTIONS)
    if unknown or (base == "reference" and opts):
        raise ValueError(f"variant {name!r}: options are for 'ours' only and must be among {', '.join(OPTIONS)}")
    return base, set(opts)


def forward_backward_slices(net, images, labels, accum, amp, scaler, label_smoothing, *,
                            autocast_cache: bool = True) -> torch.Tensor:
    """``engine._forward_backward`` with micro-batches taken as views (no gather, no index copy).

    ``autocast_cache=False`` under CUDA-graph capture, where autocast's weight cache must be off.
    """
    n = images.shape[0]
    size = -(-n // accum)
    total = torch.zeros((), device=images.device)
    starts = range(0, n, size)
    for i, start in enumerate(starts):
        x, y = images[start: start + size], labels[start: start + size]
        sync = i == len(starts) - 1
        ctx = net.no_sync() if (not sync and hasattr(net, "no_sync")) else contextlib.nullcontext()
        with ctx:
            with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None,
                                cache_enabled=autocast_cache):
                loss = F.cross_entropy(net(x).float(), y, label_smoothing=label_smoothing)
            scaler.scale(loss * (x.shape[0] / n)).backward()
        total += loss.detach() * (x.shape[0] / n)
    return total


def _our_model(cfg: TrainBenchConfig, device: torch.device):
    from verydeep.models import create_model

    return create_model(cfg.model, num_classes=cfg.num_classes, width=cfg.width,
                        head_size=max(1, cfg.image_size // 32)).to(device)


def _our_optimizer(model, device: torch.device, fused: bool):
    from verydeep.train.config import OptimConfig
    from verydeep.train.optim import build_optimizer, parameter_groups

    ocfg = OptimConfig()
    if not fused:
        return build_optimizer(model, ocfg, device)
    return torch.optim.SGD(parameter_groups(model, ocfg), lr=ocfg.lr, momentum=ocfg.momentum,
                           nesterov=ocfg.nesterov, fused=True)


class OurStep:
    """The per-step body of ``verydeep.train.engine.train``, with the measured options."""

    def __init__(self, cfg: TrainBenchConfig, device: torch.device, opts: set[str]) -> None:
        from verydeep.parallel.distributed import DistInfo
        from verydeep.parallel.strategy import DataParallel
        from verydeep.train.engine import _forward_backward, _step_seed

        self.device, self.opts, self.cfg = device, opts, cfg
        self.amp = amp_dtype(cfg.amp, device)
        self.channels_last = ("cl" in opts) or (device.type == "cuda" and "nocl" not in opts)
        self.model = _our_model(cfg, device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = _our_optimizer(self.model, device, "fused" in opts and device.type == "cuda")
        self.net = torch.compile(self.model) if "compile" in opts else self.model
        self.strategy = DataParallel(self.model, DistInfo(device=device), accum=cfg.accum)
        self.strategy.net = self.net  # the compiled module where asked; the same object otherwise
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp is torch.float16)
        self.engine_fb = _forward_backward
        self.fb = None
        if "graphs" in opts:
            self.fb = functools.partial(forward_backward_slices, autocast_cache=False)
        elif "slices" in opts:
            self.fb = forward_backward_slices
        self.step_seed = _step_seed
        self.check_every_step = not (opts & {"nosync", "graphs"})
        self.loss_sum = torch.zeros((), device=device)
        self.step_count = 0
        self.graph = None

    def _body(self, images, labels) -> torch.Tensor:
        if self.fb is None:
            return self.engine_fb(self.strategy, images, labels, self.amp, self.scaler, 0.0)
        return self.fb(self.net, images, labels, self.cfg.accum, self.amp, self.scaler, 0.0)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if "graphs" in self.opts:
            self._replay(images, labels)
            return
        for group in self.optimizer.param_groups:
            group["lr"] = self.optimizer.defaults["lr"]
        torch.manual_seed(self.step_seed(self.cfg.seed, self.step_count, 0))
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = self._body(images, labels)
        if self.check_every_step and not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at benchmark step {self.step_count}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_sum += loss.detach()
        self.step_count += 1

    def _replay(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if self.device.type != "cuda":
            raise ValueError("the 'graphs' option needs a CUDA device")
        if self.graph is None:
            self._capture(images, labels)
        self.static_images.copy_(images, non_blocking=True)
        self.static_labels.copy_(labels, non_blocking=True)
        self.graph.replay()
        self.loss_sum += self.static_loss
        self.step_count += 1

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.static_images = images.to(self.device).contiguous(memory_format=fmt).clone()
        self.static_labels = labels.to(self.device).clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (cuDNN autotuning, optimiser state) off the graph
            for _ in range(3):
                self.optimizer.zero_grad(set_to_none=True)
                self._body(self.static_images, self.static_labels)
                self.optimizer.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = self._body(self.static_images, self.static_labels)
            self.optimizer.step()

    def finish(self) -> float:
        return float(self.loss_sum) / max(1, self.step_count)


class RefStep:
    def __init__(self, cfg: TrainBenchConfig, device: torch.device) -> None:
        from verydeep.bench.reference import ReferenceStep, reference_model, reference_optimizer

        self.model = reference_model(cfg.model, num_classes=cfg.num_classes, width=cfg.width,
                                     head_size=max(1, cfg.image_size // 32)).to(device)
        self.step = ReferenceStep(self.model, reference_optimizer(self.model), amp_dtype(cfg.amp, device), device)

    def __call__(self, images, labels) -> None:
        self.step(images, labels)


def run_train_bench(cfg: TrainBenchConfig) -> list[BenchResult]:
    """Every variant of ``cfg.variants``; one at a time, each torn down before the next."""
    device = resolve_device(cfg.device)
    variants = [v.strip() for v in cfg.variants.split(",") if v.strip()]
    parsed = [(v, *parse_variant(v)) for v in variants]
    gen = torch.Generator().manual_seed(cfg.seed)
    images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=gen).to(device)
    labels = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=gen).to(device)
    macs = forward_macs(_our_model(cfg, torch.device("cpu")), cfg.image_size)
    interleave = device.type == "cpu" if cfg.interleave is None else cfg.interleave
    rounds, windows = (cfg.repeats, 1) if interleave else (1, cfg.repeats)
    samples: dict[str, list[float]] = {name: [] for name, _, _ in parsed}
    ms: dict[str, list[float]] = {name: [] for name, _, _ in parsed}
    mem: dict[str, float] = {}
    for _ in range(rounds):
        for name, base, opts in parsed:
            torch.manual_seed(cfg.seed)
            ours = base == "ours"
            with backend_flags(device, benchmark=ours, tf32=ours):
                step = OurStep(cfg, device, opts) if ours else RefStep(cfg, device)
                reset_peak_memory(device)
                _, _, rates = time_steps(lambda: step(images, labels), device=device, steps=cfg.steps,
                                         warmup=cfg.warmup, repeats=windows, images_per_step=cfg.batch_size)
                mem[name] = max(mem.get(name, 0.0), peak_memory_mb(device))
            samples[name] += rates
            ms[name] += [1000 * cfg.batch_size / r for r in rates]
            del step
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    results = []
    has_reference = any(base == "reference" for _, base, _ in parsed)
    for name, base, _ in parsed:
        ips = statistics.median(samples[name])
        results.append(BenchResult(
            bench="train", variant=name, images_per_s=ips, ms_per_step=statistics.median(ms[name]),
            batch_size=cfg.batch_size, peak_memory_mb=mem[name], tflops=training_tflops(macs, ips),
            samples=samples[name], reference="reference" if base == "ours" and has_reference else None,
            notes=f"{cfg.model} width {cfg.width:g} at {cfg.image_size}px, amp {cfg.amp}",
        ))
    return results
