"""Training-step throughput on synthetic tensors: the model and the step alone, no data loading.

Variants (``variants``, comma-separated):

- ``reference``: torchvision's VGG class and a plain AMP loop (``verydeep.bench.reference``),
  with ``cudnn.benchmark`` as its users set it; ``reference+timm``: the same configured as
  timm users run it (channels_last, bf16, cudnn.benchmark, no per-step loss read).
- ``ours``: the training loop's own step, :func:`verydeep.train.step.train_step`, set up as
  ``verydeep.train.setup`` sets up a single-process run: our VGG prepared by the run's
  runtime policy (``verydeep.runtime``: bf16 on CUDA, channels_last on CUDA and CPU) behind the
  single-process data-parallel strategy, ``build_optimizer`` (fused SGD), the
  non-finite guard without a host sync, cudnn.benchmark and TF32 on CUDA.
- ``ours+OPT[+OPT...]``: the same with one thing changed, to measure its share or a change
  the loop might adopt: ``compile`` (the model compiled in place, as ``train.compile`` does),
  ``foreach`` (SGD's foreach kernels, CUDA's optimiser before fused), ``loop`` (SGD's
  per-tensor loops: torch's default on the CPU, the reference's kernels there), ``nosync`` (no non-finite
  guard at all), ``slices`` (the strategy's forward/backward replaced by a bare micro-batch
  loop over the model: what the parallel-strategy interface costs a single process),
  ``graphs`` (the whole step captured once in a CUDA graph and replayed: no per-step LR, seed
  or guard, so not through ``train_step``; implies nosync and slices, CUDA only, no fp16 loss
  scaling), ``cl`` / ``nocl`` (channels_last on / off: ``ours+nocl`` shows channels_last's share).

Both sides see the same shapes, classes, precision and TF32 setting (``tf32``, on by default:
what torchvision's reference script and our runs set on CUDA); inputs already sit on the
device. Each ratio of ours is stated against every reference measured; the headline one
(``reference``) is the strongest reference, ``reference+timm``, where it was measured. Every
window lasts at least ``min_seconds``; on CUDA, where variants are timed one after the other,
the headline reference is timed again at the end and ``drift`` (its second figure over its
first) shows how much the machine moved in between. With ``profile_steps`` each variant also
gets a ``torch.profiler`` summary (``verydeep.bench.step_profile``). The losses are kept on the
device and read once after timing: ``nonfinite_losses`` counts the inf/NaN ones.
"""

from __future__ import annotations

import functools
import gc
import statistics
from dataclasses import dataclass, replace

import torch

from verydeep.bench.common import (
    BenchResult,
    amp_dtype,
    backend_flags,
    forward_macs,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
    time_steps,
    training_tflops,
)
from verydeep.bench.reference import ReferenceStep, reference_model, reference_optimizer
from verydeep.models import create_model
from verydeep.parallel.config import ParallelConfig
from verydeep.parallel.distributed import DistInfo
from verydeep.parallel.strategy import ParallelStrategy, build_strategy
from verydeep.runtime import build_runtime
from verydeep.training_config import OptimConfig, ScheduleConfig
from verydeep.train.optim import build_optimizer, parameter_groups
from verydeep.train.schedules import LRSchedule
from verydeep.train.step import StepSettings, train_step

OPTIONS = ("compile", "foreach", "loop", "nosync", "slices", "graphs", "cl", "nocl")
REFERENCE_OPTIONS = ("timm",)


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
    min_seconds: float = 0.0  # each timed window lasts at least this long (the GPU run: 5 s)
    tf32: bool = True  # TF32 matmuls and convolutions on CUDA, for every variant alike
    profile_steps: int = 0  # > 0: a torch.profiler summary of that many steps per variant
    compile_backend: str = "inductor"  # the 'compile' option's (aot_eager: traces, builds no kernels)
    # None: on CPU, where other processes share the cores, each variant is rebuilt and timed
    # once per round, ``repeats`` rounds, so load that comes and goes hits every variant alike;
    # on CUDA each variant is built once and timed ``repeats`` windows in a row.
    interleave: bool | None = None

    @classmethod
    def for_gpu(cls, **overrides) -> TrainBenchConfig:
        """The paper's setting: VGG16 at 224, batch 256."""
        return replace(cls(width=1.0, image_size=224, batch_size=256, steps=20, warmup=5, repeats=3,
                           device="cuda", min_seconds=5.0, profile_steps=10), **overrides)


def parse_variant(name: str, ours_options: tuple[str, ...] = OPTIONS,
                  reference_options: tuple[str, ...] = REFERENCE_OPTIONS) -> tuple[str, set[str]]:
    base, *opts = name.strip().split("+")
    if base not in ("ours", "reference"):
        raise ValueError(f"unknown variant {name!r}: 'reference', 'reference+timm', 'ours' or 'ours+OPTION' "
                         f"({', '.join(ours_options)})")
    allowed = ours_options if base == "ours" else reference_options
    if set(opts) - set(allowed):
        raise ValueError(f"variant {name!r}: options of {base!r} must be among {', '.join(allowed)}")
    return base, set(opts)


def reference_names(parsed: list[tuple[str, str, set[str]]]) -> list[str]:
    """The reference variants measured, the headline one first: the strongest (timm-style),
    doing ours' transform where there is a choice (``jitter``); each of ours is compared with each."""
    refs = [(name, opts) for name, base, opts in parsed if base == "reference"]
    return [name for name, _ in sorted(refs, key=lambda r: (-("timm" in r[1]), -("jitter" in r[1]), len(r[0])))]


def count_nonfinite(losses: list[torch.Tensor]) -> int:
    """How many of the steps' losses (device scalars, read here once) are inf or NaN."""
    if not losses:
        return 0
    return int((~torch.isfinite(torch.stack([loss.detach().float().reshape(()) for loss in losses]))).sum())


def forward_backward_slices(net, images, labels, accum, amp, loss_scale, loss_fn, *,
                            autocast_cache: bool = True) -> torch.Tensor:
    """A bare micro-batch loop (views of the batch) over ``net``: forward, loss, backward; the batch-mean loss.

    ``autocast_cache=False`` under CUDA-graph capture, where autocast's weight cache must be off.
    """
    n = images.shape[0]
    size = -(-n // accum)
    total = torch.zeros((), device=images.device)
    for start in range(0, n, size):
        x, y = images[start: start + size], labels[start: start + size]
        with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None, cache_enabled=autocast_cache):
            loss = loss_fn(net(x), y)
        (loss * (x.shape[0] / n) * loss_scale).backward()
        total += loss.detach() * (x.shape[0] / n)
    return total


class BareMicroBatches:
    """The single-process strategy as ``train_step`` sees it, its forward/backward replaced by
    :func:`forward_backward_slices` over the model (the ``slices`` option)."""

    def __init__(self, strategy: ParallelStrategy, net: torch.nn.Module, accum: int) -> None:
        self.strategy, self.net, self.accum = strategy, net, accum
        self.dist, self.local_module = strategy.dist, strategy.local_module

    def forward_backward(self, images, labels, loss_fn, *, amp_dtype=None, loss_scale=1.0):
        return forward_backward_slices(self.net, images, labels, self.accum, amp_dtype, loss_scale, loss_fn)

    def any_rank(self, flag: torch.Tensor) -> torch.Tensor:
        return self.strategy.any_rank(flag)

    def floating_buffers(self) -> list[torch.Tensor]:
        return self.strategy.floating_buffers()

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        return self.strategy.clip_grad_norm_(max_norm)


def _our_model(cfg: TrainBenchConfig, device: torch.device):
    return create_model(cfg.model, num_classes=cfg.num_classes, width=cfg.width,
                        head_size=max(1, cfg.image_size // 32)).to(device)


def _our_optimizer(module, device: torch.device, opts: set[str]):
    """``build_optimizer``'s (fused where it can), or SGD with the unfused kernels the options name."""
    ocfg = OptimConfig()
    if not opts & {"foreach", "loop"}:
        return build_optimizer(module, ocfg, device)
    return torch.optim.SGD(parameter_groups(module, ocfg), lr=ocfg.lr, momentum=ocfg.momentum,
                           nesterov=ocfg.nesterov, foreach="foreach" in opts)


class OurStep:
    """One :func:`~verydeep.train.step.train_step` per call, with the measured options."""

    def __init__(self, cfg: TrainBenchConfig, device: torch.device, opts: set[str]) -> None:
        self.opts, self.cfg = opts, cfg
        channels_last = True if "cl" in opts else False if "nocl" in opts else None
        self.runtime = build_runtime(device, cfg.amp, channels_last)
        self.device = self.runtime.device
        self.model = self.runtime.prepare_model(_our_model(cfg, device))
        if "compile" in opts:
            self.model.compile(backend=cfg.compile_backend)
        self.strategy = build_strategy(self.model, ParallelConfig(), DistInfo(device=self.device),
                                       crop_size=cfg.image_size, accum=cfg.accum)
        self.optimizer = _our_optimizer(self.strategy.local_module, device, opts)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.runtime.amp_dtype is torch.float16)
        self.schedule = LRSchedule(ScheduleConfig(name="constant"), OptimConfig().lr, steps_per_epoch=1, epochs=1)
        self.settings = StepSettings(seed=cfg.seed, amp_dtype=self.runtime.amp_dtype,
                                     check_finite=not opts & {"nosync", "graphs"})
        self.step_strategy = self.strategy
        if "slices" in opts:
            self.step_strategy = BareMicroBatches(self.strategy, self.model, cfg.accum)
        self.losses: list[torch.Tensor] = []  # on the device; read once, after timing
        self.step_count = 0
        self.graph = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if "graphs" in self.opts:
            self._replay(images, labels)
            return
        images = self.runtime.prepare_input(images)
        labels = labels.to(self.device, non_blocking=True)
        loss, _ = train_step(self.step_strategy, self.optimizer, self.scaler, self.schedule, images, labels,
                             step=self.step_count, settings=self.settings)
        self.losses.append(loss.detach())
        self.step_count += 1

    def _graph_body(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return forward_backward_slices(self.model, images, labels, self.cfg.accum, self.runtime.amp_dtype, 1.0,
                                       self.settings.loss_fn, autocast_cache=False)

    def _replay(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if self.device.type != "cuda":
            raise ValueError("the 'graphs' option needs a CUDA device")
        if self.runtime.amp_dtype is torch.float16:
            raise ValueError("the 'graphs' option has no fp16 loss scaling: use amp bf16 or none")
        if self.graph is None:
            self._capture(images, labels)
        self.static_images.copy_(images, non_blocking=True)
        self.static_labels.copy_(labels, non_blocking=True)
        self.graph.replay()
        self.losses.append(self.static_loss.clone())
        self.step_count += 1

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.static_images = self.runtime.prepare_input(images).clone()
        self.static_labels = labels.to(self.device).clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (cuDNN autotuning, optimiser state) off the graph
            for _ in range(3):
                self.optimizer.zero_grad(set_to_none=True)
                self._graph_body(self.static_images, self.static_labels)
                self.optimizer.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = self._graph_body(self.static_images, self.static_labels)
            self.optimizer.step()

    def nonfinite(self) -> int:
        return count_nonfinite(self.losses)


class RefStep:
    """The reference's step (``reference.ReferenceStep``); ``timm`` in ``opts``: the stronger one."""

    def __init__(self, cfg: TrainBenchConfig, device: torch.device, opts: set[str] = frozenset()) -> None:
        self.model = reference_model(cfg.model, num_classes=cfg.num_classes, width=cfg.width,
                                     head_size=max(1, cfg.image_size // 32)).to(device)
        self.step = ReferenceStep(self.model, reference_optimizer(self.model), amp_dtype(cfg.amp, device), device,
                                  timm="timm" in opts)

    def __call__(self, images, labels) -> None:
        self.step(images, labels)

    def nonfinite(self) -> int:
        return count_nonfinite(self.step.losses)


def _build(name_base_opts, cfg: TrainBenchConfig, device: torch.device):
    _, base, opts = name_base_opts
    return OurStep(cfg, device, opts) if base == "ours" else RefStep(cfg, device, opts)


def _time_once(parsed_variant, cfg: TrainBenchConfig, device: torch.device, images, labels, windows: int,
               profile: bool) -> tuple[list[float], float, int, dict | None]:
    """(images/s per window, peak memory MB, non-finite losses, profile) of one variant built afresh."""
    from verydeep.bench.step_profile import step_profile

    torch.manual_seed(cfg.seed)
    # cudnn.benchmark for every side (what users set); one TF32 setting for all
    with backend_flags(device, benchmark=True, tf32=cfg.tf32):
        step = _build(parsed_variant, cfg, device)
        reset_peak_memory(device)
        _, _, rates = time_steps(functools.partial(step, images, labels), device=device, steps=cfg.steps,
                                 warmup=cfg.warmup, repeats=windows, images_per_step=cfg.batch_size,
                                 min_seconds=cfg.min_seconds)
        memory = peak_memory_mb(device)
        nonfinite = step.nonfinite()
        prof = step_profile(functools.partial(step, images, labels), device, cfg.profile_steps) if profile else None
    del step
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rates, memory, nonfinite, prof


def run_train_bench(cfg: TrainBenchConfig, progress=None) -> list[BenchResult]:
    """Every variant of ``cfg.variants``; one at a time, each torn down before the next.
    ``progress`` (if given) gets the rows so far after each variant is timed."""
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
    mem: dict[str, float] = {}
    nonfinite: dict[str, int] = {name: 0 for name, _, _ in parsed}
    profiles: dict[str, dict] = {}
    for r in range(rounds):
        for variant in parsed:
            name = variant[0]
            rates, memory, bad, prof = _time_once(variant, cfg, device, images, labels, windows,
                                                  profile=cfg.profile_steps > 0 and r == rounds - 1)
            samples[name] += rates
            mem[name] = max(mem.get(name, 0.0), memory)
            nonfinite[name] += bad
            if prof:
                profiles[name] = prof
            if progress is not None:  # rows so far, for a caller that writes them as they come
                progress(_train_results(cfg, parsed, samples, mem, nonfinite, profiles, {}, macs, interleave))
    references = reference_names(parsed)
    drift = {}
    if references and not interleave and len(parsed) > 1:  # the headline reference again, last
        again, _, _, _ = _time_once(next(p for p in parsed if p[0] == references[0]), cfg, device, images, labels,
                                    windows, profile=False)
        drift[references[0]] = statistics.median(again) / statistics.median(samples[references[0]])
    return _train_results(cfg, parsed, samples, mem, nonfinite, profiles, drift, macs, interleave)


def _train_results(cfg: TrainBenchConfig, parsed, samples, mem, nonfinite, profiles, drift, macs,
                   interleave: bool) -> list[BenchResult]:
    """One row per variant timed so far."""
    done = [(name, base) for name, base, _ in parsed if samples[name]]
    references = reference_names([p for p in parsed if samples[p[0]]])
    results = []
    for name, base in done:
        ips = statistics.median(samples[name])
        results.append(BenchResult(
            bench="train", variant=name, images_per_s=ips, ms_per_step=1000 * cfg.batch_size / ips,
            batch_size=cfg.batch_size, peak_memory_mb=mem[name], tflops=training_tflops(macs, ips),
            samples=samples[name], reference=references[0] if base == "ours" and references else None,
            references=references if base == "ours" else [], drift=drift.get(name),
            nonfinite_losses=nonfinite[name], profile=profiles.get(name),
            notes=f"{cfg.model} width {cfg.width:g} at {cfg.image_size}px, amp {cfg.amp}, TF32 "
                  f"{'on' if cfg.tf32 else 'off'} (all variants), windows of >= {cfg.min_seconds:g} s"
                  + (", interleaved rounds" if interleave else ""),
        ))
    return results
