"""End-to-end training throughput: JPEG files on disk -> loader -> training step, ours vs references.

Variants (``variants``, comma-separated):

- ``reference``: what users run, pytorch/examples' ImageNet recipe: torchvision ``ImageFolder``
  with ``RandomResizedCrop`` + flip + ``ToTensor`` + ``Normalize`` in a ``DataLoader`` (the same
  workers, prefetch and pinned memory as ours) feeding torchvision's VGG in the plain AMP loop
  of ``reference.ReferenceStep`` (cudnn.benchmark on).
- ``reference+timm``: the stronger reference, as timm users run it: timm's loader (its
  ``RandomResizedCrop`` + flip, uint8 batches normalized on the device by its prefetcher;
  colour jitter off, so it does no more work than the plain reference) feeding the same model
  in channels_last with bf16 and cudnn.benchmark. Where timm is not installed its loader is
  emulated (torchvision transforms to uint8, normalized on the device), and the notes say so.
- ``reference+jitter`` / ``reference+timm+jitter``: the same with our transform written the
  usual torchvision way (``Resize(S)``, S uniform in [scale_min, scale_max] per image,
  ``RandomCrop``, flip; float32 normalized in the workers, or uint8 normalized on the device),
  so that transform choice and implementation are not mixed in one ratio. Ours' headline
  ratio is against the strongest reference doing our transform (``reference+timm+jitter``
  where measured; ``train_step.reference_names``).
- ``ours``: ``verydeep.data.build_train_loader`` (the paper's scale jittering S in
  [scale_min, scale_max], crop, flip, colour shift; Pillow in the workers) feeding the
  training loop's step (``train_step.OurStep``); ``ours+gpudecode``: the same loader with
  ``data.decode: gpu`` (workers read bytes and draw crops, nvJPEG decodes on the device); and
  any ``train_step`` option (``ours+nocl``, ...).

The timing is sustained: each variant's loader runs one long pass over the generated files,
cycled (``verydeep.bench.jpeg_files``: ImageNet-like, about 110 KB at 500x375), ``warmup``
batches untimed (at least 2 x workers: worker start-up and the first prefetched batches),
then ``repeats`` windows of at least ``steps`` batches and ``min_seconds`` back to back, each
longer than what the workers can have prefetched (workers x prefetch), so a loader that cannot
keep up shows; the figure is the median window. The headline reference is timed again after
the others (``drift``: its second figure over its first). Each step's loss stays on the device
and is read once at the end: ``nonfinite_losses`` counts the inf/NaN ones (a corrupted batch
shows there first).
"""

from __future__ import annotations

import gc
import inspect
import math
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from verydeep.bench.common import (
    BenchResult,
    backend_flags,
    forward_macs,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
    time_steps,
    training_tflops,
)
from verydeep.data.config import IMAGENET_MEAN, IMAGENET_STD

E2E_OPTIONS = ("gpudecode",)  # on top of train_step's options
E2E_REFERENCE_OPTIONS = ("timm", "jitter")
MAX_RATE = 20_000  # images/s no run here reaches: sizes the file passes a window of min_seconds may need


@dataclass
class E2EBenchConfig:
    model: str = "vgg16"
    width: float = 1 / 16
    crop_size: int = 224
    scale_min: int = 256  # the paper's scale jittering, S in [256, 512]
    scale_max: int = 512
    batch_size: int = 8
    images: int = 64
    classes: int = 4
    workers: int = 2
    prefetch: int = 2  # batches each worker keeps ready (both sides)
    num_classes: int | None = None  # None: the number of class folders
    steps: int = 5  # batches per timed window
    warmup: int | None = None  # untimed batches first; None: 2 x workers (at least 1)
    repeats: int = 2  # timed windows, back to back; the figure is their median
    device: str = "auto"
    amp: str = "auto"
    variants: str = "reference,reference+timm,reference+timm+jitter,ours,ours+gpudecode"
    data_dir: str | None = None
    seed: int = 0
    min_seconds: float = 0.0  # each timed window lasts at least this long (the GPU run: 5 s)
    tf32: bool = True  # on CUDA, for every variant alike

    @classmethod
    def for_gpu(cls, **overrides) -> "E2EBenchConfig":
        return replace(cls(width=1.0, batch_size=256, images=4096, classes=16, workers=15, steps=40,
                           repeats=2, device="cuda", min_seconds=5.0), **overrides)


@dataclass(frozen=True)
class TimingPlan:
    warmup: int  # untimed batches
    steps: int  # batches per window
    windows: int
    cycles: int  # passes over the file list the loader needs
    max_steps: int = 0  # batches a window may take (min_seconds at MAX_RATE)

    @property
    def batches(self) -> int:
        return self.warmup + max(self.steps, self.max_steps) * self.windows


def timing_plan(cfg: E2EBenchConfig, n_images: int) -> TimingPlan:
    """The sustained window of ``cfg`` over ``n_images`` files; refuses a window the workers'
    prefetched batches could cover (it would time the step, not the loader)."""
    prefetched = cfg.workers * cfg.prefetch
    warmup = cfg.warmup if cfg.warmup is not None else max(1, 2 * cfg.workers)
    if warmup < 2 * cfg.workers:
        raise ValueError(f"warm-up of {warmup} batches: at least 2 x workers = {2 * cfg.workers} are needed")
    if cfg.steps <= prefetched:
        raise ValueError(f"a timed window of {cfg.steps} batches is no longer than the {prefetched} batches "
                         f"{cfg.workers} workers x prefetch {cfg.prefetch} keep ready: it would time the "
                         f"step, not the loader; use more --steps")
    if cfg.repeats < 1:
        raise ValueError("at least one timed window (--repeats)")
    max_steps = max(cfg.steps, math.ceil(cfg.min_seconds * MAX_RATE / cfg.batch_size))
    plan = TimingPlan(warmup, cfg.steps, cfg.repeats, 1, max_steps)
    return replace(plan, cycles=math.ceil(plan.batches * cfg.batch_size / max(1, n_images)))


class Repeated(Dataset):
    """``inner`` ``times`` over (index i is inner's i mod its length); its ``transform`` is
    inner's, so a loader factory that sets it (timm's) sets inner's."""

    def __init__(self, inner, times: int) -> None:
        self.inner, self.times = inner, times

    def __len__(self) -> int:
        return len(self.inner) * self.times

    def __getitem__(self, i):
        return self.inner[i % len(self.inner)]

    @property
    def transform(self):
        return self.inner.transform

    @transform.setter
    def transform(self, value) -> None:
        self.inner.transform = value


def _data_loader(dataset, cfg: E2EBenchConfig, device: torch.device, **kwargs):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                      pin_memory=device.type == "cuda", drop_last=True,
                      prefetch_factor=cfg.prefetch if cfg.workers else None,
                      generator=torch.Generator().manual_seed(cfg.seed), **kwargs)


class RandomScale:
    """torchvision's way to our scale jittering: the shorter side resized to S, S uniform in
    [lo, hi] per image (Pillow bilinear, antialiased, as ``T.Resize``)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def __call__(self, img):
        from torchvision.transforms import functional as TF

        return TF.resize(img, int(torch.randint(self.lo, self.hi + 1, ()).item()))


def _reference_geometry(cfg: E2EBenchConfig, jitter: bool) -> list:
    from torchvision import transforms as T

    if jitter:
        return [RandomScale(cfg.scale_min, cfg.scale_max), T.RandomCrop(cfg.crop_size), T.RandomHorizontalFlip()]
    return [T.RandomResizedCrop(cfg.crop_size), T.RandomHorizontalFlip()]


def reference_loader(root: Path, cfg: E2EBenchConfig, device: torch.device, cycles: int, jitter: bool = False):
    """ImageFolder + RandomResizedCrop (``jitter``: our scale jittering) + flip + ToTensor +
    Normalize, through a DataLoader."""
    from torchvision import datasets, transforms as T

    tf = T.Compose([*_reference_geometry(cfg, jitter), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return _data_loader(Repeated(datasets.ImageFolder(str(root / "train"), transform=tf), cycles), cfg, device)


class DeviceNormalized:
    """uint8 batches from ``loader`` as normalized float32 on ``device`` (timm's prefetcher's job)."""

    def __init__(self, loader, device: torch.device) -> None:
        self.loader, self.device = loader, device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255

    def __iter__(self):
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
            yield images, labels.to(self.device, non_blocking=True)


def _uint8_loader(root: Path, cfg: E2EBenchConfig, device: torch.device, cycles: int, jitter: bool):
    """timm's loader emulated: torchvision transforms to uint8, normalized on the device."""
    from torchvision import datasets, transforms as T

    tf = T.Compose([*_reference_geometry(cfg, jitter), T.PILToTensor()])
    dataset = Repeated(datasets.ImageFolder(str(root / "train"), transform=tf), cycles)
    return DeviceNormalized(_data_loader(dataset, cfg, device), device)


def timm_loader(root: Path, cfg: E2EBenchConfig, device: torch.device, cycles: int, jitter: bool = False):
    """(loader, note): timm's training loader, or its emulation where timm is not installed;
    ``jitter``: our scale jittering (timm has no such transform: its loader's way of handing
    uint8 batches over, normalized on the device, with torchvision's transforms)."""
    if jitter:
        return _uint8_loader(root, cfg, device, cycles, True), "S jitter via torchvision, uint8 normalized on device"
    try:
        from timm.data import ImageDataset, create_loader
    except ImportError:
        return _uint8_loader(root, cfg, device, cycles, False), "timm not installed: its loader emulated"
    import timm

    wanted = dict(input_size=(3, cfg.crop_size, cfg.crop_size), batch_size=cfg.batch_size, is_training=True,
                  use_prefetcher=device.type == "cuda", num_workers=cfg.workers, pin_memory=device.type == "cuda",
                  color_jitter=0.0, interpolation="bilinear", persistent_workers=False, device=device)
    accepted = inspect.signature(create_loader).parameters
    loader = create_loader(Repeated(ImageDataset(str(root / "train")), cycles),
                           **{k: v for k, v in wanted.items() if k in accepted})
    return loader, f"timm {timm.__version__} loader"


def our_loader(root: Path, cfg: E2EBenchConfig, device: torch.device, cycles: int, decode: str = "cpu"):
    """Our training loader as a run on ``device`` builds it: its memory format, and bf16
    batches where the step autocasts to bf16."""
    from verydeep.data import DataConfig, build_train_loader, discover
    from verydeep.runtime import build_runtime

    dcfg = DataConfig(root=str(root), scale_min=cfg.scale_min, scale_max=cfg.scale_max, crop_size=cfg.crop_size,
                      workers=cfg.workers, prefetch_factor=cfg.prefetch, persistent_workers=False,
                      index_cache=str(root / ".index"), decode=decode)
    runtime = build_runtime(device, cfg.amp)  # as the training run sets its loader up
    loader = build_train_loader(dcfg, discover(dcfg).train * cycles, cfg.batch_size, seed=cfg.seed, device=device,
                                channels_last=runtime.channels_last,
                                dtype=torch.bfloat16 if runtime.amp_dtype is torch.bfloat16 else torch.float32)
    note = "" if decode == "cpu" or loader.decoder is not None else "GPU decoding unavailable: CPU path"
    return loader, note


def ensure_jpegs(cfg: E2EBenchConfig, root: Path) -> Path:
    """``root/train/<class>/*.JPEG``: ``cfg.images`` generated files (existing ones are reused)."""
    from verydeep.bench.jpeg_files import write_jpeg_files

    write_jpeg_files(root, n=cfg.images, classes=cfg.classes, seed=cfg.seed)
    return root


def _file_stats(root: Path) -> tuple[int, int, float]:
    """(files, class folders, mean file size in KB) of ``root/train``."""
    classes = [d for d in (root / "train").iterdir() if d.is_dir()]
    sizes = [f.stat().st_size for d in classes for f in d.iterdir() if f.is_file()]
    return len(sizes), len(classes), sum(sizes) / max(1, len(sizes)) / 1000


def _variant(name: str, root: Path, cfg: E2EBenchConfig, device: torch.device, plan: TimingPlan, tcfg):
    """(step, loader, note) of one variant."""
    from verydeep.bench.train_step import OPTIONS, OurStep, RefStep, parse_variant

    base, opts = parse_variant(name, OPTIONS + E2E_OPTIONS, E2E_REFERENCE_OPTIONS)
    if base == "reference":
        step = RefStep(tcfg, device, opts - {"jitter"})
        if "timm" in opts:
            return (step, *timm_loader(root, cfg, device, plan.cycles, "jitter" in opts))
        return step, reference_loader(root, cfg, device, plan.cycles, "jitter" in opts), ""
    step = OurStep(tcfg, device, opts - set(E2E_OPTIONS))
    return (step, *our_loader(root, cfg, device, plan.cycles, "gpu" if "gpudecode" in opts else "cpu"))


def _measure(name: str, root: Path, cfg: E2EBenchConfig, device: torch.device, plan: TimingPlan, tcfg):
    """(images/s of each window, peak memory MB, note, non-finite losses) of one variant."""
    torch.manual_seed(cfg.seed)
    with backend_flags(device, benchmark=True, tf32=cfg.tf32):
        step, loader, note = _variant(name, root, cfg, device, plan, tcfg)
        batches = iter(loader)

        def one_step():
            batch = next(batches)
            step(batch[0], batch[1])

        reset_peak_memory(device)
        _, _, rates = time_steps(one_step, device=device, steps=plan.steps, warmup=plan.warmup,
                                 repeats=plan.windows, images_per_step=cfg.batch_size,
                                 min_seconds=cfg.min_seconds, max_steps=plan.max_steps)
        return rates, peak_memory_mb(device), note, step.nonfinite()


def _time_variant(name: str, root: Path, cfg: E2EBenchConfig, device: torch.device, plan: TimingPlan, tcfg):
    """:func:`_measure`, then its model, loader and workers freed before the next variant."""
    measured = _measure(name, root, cfg, device, plan, tcfg)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return measured


def run_e2e_bench(cfg: E2EBenchConfig, progress=None) -> list[BenchResult]:
    """Every variant of ``cfg.variants``, then the headline reference again; ``progress`` (if
    given) gets the rows so far after each variant."""
    from verydeep.bench.train_step import OPTIONS, TrainBenchConfig, parse_variant, reference_names
    from verydeep.models import create_model

    device = resolve_device(cfg.device)
    names = [v.strip() for v in cfg.variants.split(",") if v.strip()]
    parsed = [(v, *parse_variant(v, OPTIONS + E2E_OPTIONS, E2E_REFERENCE_OPTIONS)) for v in names]
    with tempfile.TemporaryDirectory(prefix="verydeep-e2e-") as tmp:
        root = ensure_jpegs(cfg, Path(cfg.data_dir) if cfg.data_dir else Path(tmp))
        n_images, n_classes, kb = _file_stats(root)
        plan = timing_plan(cfg, n_images)
        num_classes = cfg.num_classes or n_classes
        tcfg = TrainBenchConfig(model=cfg.model, width=cfg.width, image_size=cfg.crop_size,
                                batch_size=cfg.batch_size, num_classes=num_classes, device=cfg.device,
                                amp=cfg.amp, seed=cfg.seed)
        macs = forward_macs(create_model(cfg.model, num_classes=num_classes, width=cfg.width,
                                         head_size=max(1, cfg.crop_size // 32)), cfg.crop_size)
        facts = (n_images, kb, plan, macs)
        measured = {}
        for name in names:
            measured[name] = _time_variant(name, root, cfg, device, plan, tcfg)
            if progress is not None:
                progress(_e2e_results(cfg, parsed, measured, {}, facts))
        references = reference_names(parsed)
        drift = {}
        if references and len(names) > 1:  # the headline reference again, last: how far the machine moved
            again = _time_variant(references[0], root, cfg, device, plan, tcfg)[0]
            drift[references[0]] = statistics.median(again) / statistics.median(measured[references[0]][0])
    return _e2e_results(cfg, parsed, measured, drift, facts)


def _e2e_results(cfg: E2EBenchConfig, parsed, measured: dict, drift: dict, facts) -> list[BenchResult]:
    """One row per variant measured so far."""
    from verydeep.bench.train_step import reference_names

    n_images, kb, plan, macs = facts
    references = reference_names([p for p in parsed if p[0] in measured])
    results = []
    for name, base, opts in parsed:
        if name not in measured:
            continue
        rates, memory, note, nonfinite = measured[name]
        ips = statistics.median(rates)
        jitter = base == "ours" or "jitter" in opts
        transform = f"S in [{cfg.scale_min}, {cfg.scale_max}]" if jitter else "RandomResizedCrop"
        results.append(BenchResult(
            bench="e2e", variant=name, images_per_s=ips, ms_per_step=1000 * cfg.batch_size / ips,
            batch_size=cfg.batch_size, peak_memory_mb=memory, tflops=training_tflops(macs, ips), samples=rates,
            reference=references[0] if base == "ours" and references else None,
            references=references if base == "ours" else [], drift=drift.get(name), nonfinite_losses=nonfinite,
            notes=f"{n_images} JPEGs ({kb:.0f} KB average) cycled {plan.cycles}x; {transform}, crop "
                  f"{cfg.crop_size}; {cfg.workers} workers, prefetch {cfg.prefetch}; warm-up {plan.warmup} "
                  f"batches, {plan.windows} windows of {plan.steps} batches" + (f"; {note}" if note else "")
                  + (f"; windows of >= {cfg.min_seconds:g} s" if cfg.min_seconds else "")
                  + f"; TF32 {'on' if cfg.tf32 else 'off'} (all variants)",
        ))
    return results
