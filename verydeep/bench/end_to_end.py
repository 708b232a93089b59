"""End-to-end training throughput: JPEG files on disk -> loader -> training step, ours vs reference.

Ours: ``verydeep.data.build_train_loader`` (the paper's scale jittering, crop, flip and colour
shift) feeding the training loop's step (``train_step.OurStep``). Reference: torchvision's
``ImageFolder`` with PIL transforms (shorter side rescaled to a random S in the same range,
random crop, flip, ``ToTensor``, ``Normalize``; torchvision has no PCA colour shift, so the
reference does slightly less work) and a ``DataLoader`` with the same workers, batch size and
pinned memory, feeding the plain AMP loop of ``reference.ReferenceStep``.

The JPEGs are generated (``verydeep.bench.jpeg_files``: ImageNet-sized, about 500x375 at
quality 90) in ``data_dir`` (reused when already there) or a temporary folder. Each timed round
builds a fresh loader and skips ``warmup`` batches (worker start-up, first allocations).
"""

from __future__ import annotations

import gc
import random
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from verydeep.bench.common import (
    backend_flags,
    BenchResult,
    forward_macs,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
    time_steps,
    training_tflops,
)


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
    num_classes: int | None = None  # None: the number of class folders
    steps: int = 3
    warmup: int = 1
    repeats: int = 3
    device: str = "auto"
    amp: str = "auto"
    variants: str = "reference,ours"
    data_dir: str | None = None
    seed: int = 0

    @classmethod
    def for_gpu(cls, **overrides) -> "E2EBenchConfig":
        return replace(cls(width=1.0, batch_size=256, images=4096, classes=16, workers=15, steps=10,
                           warmup=3, repeats=1, device="cuda"), **overrides)


class ShorterSideRange:
    """Rescale so the shorter side is a random S in [lo, hi] (the reference's scale jittering)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def __call__(self, img):
        from torchvision.transforms import functional as TF

        return TF.resize(img, random.randint(self.lo, self.hi))


def reference_loader(root: Path, cfg: E2EBenchConfig, device: torch.device, epoch: int):
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms as T

    from verydeep.data.config import IMAGENET_MEAN, IMAGENET_STD

    tf = T.Compose([ShorterSideRange(cfg.scale_min, cfg.scale_max), T.RandomCrop(cfg.crop_size),
                    T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = datasets.ImageFolder(str(root / "train"), transform=tf)
    gen = torch.Generator().manual_seed(cfg.seed + epoch)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                      pin_memory=device.type == "cuda", drop_last=True, generator=gen,
                      worker_init_fn=_seed_worker)


def _seed_worker(worker_id: int) -> None:
    random.seed(torch.initial_seed() % 2**32)


def our_loader(root: Path, cfg: E2EBenchConfig, device: torch.device, epoch: int):
    from verydeep.data import DataConfig, build_train_loader, discover

    dcfg = DataConfig(root=str(root), scale_min=cfg.scale_min, scale_max=cfg.scale_max, crop_size=cfg.crop_size,
                      workers=cfg.workers, persistent_workers=False, index_cache=str(root / ".index"))
    samples = discover(dcfg).train
    return build_train_loader(dcfg, samples, cfg.batch_size, seed=cfg.seed, epoch=epoch, device=device,
                              channels_last=device.type == "cuda")


def ensure_jpegs(cfg: E2EBenchConfig, root: Path) -> Path:
    """``root/train/<class>/*.JPEG``: ``cfg.images`` generated files (existing ones are reused)."""
    from verydeep.bench.jpeg_files import write_jpeg_files

    write_jpeg_files(root, n=cfg.images, classes=cfg.classes, seed=cfg.seed)
    return root


def _count_images(root: Path) -> tuple[int, int]:
    classes = [d for d in (root / "train").iterdir() if d.is_dir()]
    return sum(1 for d in classes for f in d.iterdir() if f.is_file()), len(classes)


def run_e2e_bench(cfg: E2EBenchConfig) -> list[BenchResult]:
    from verydeep.bench.train_step import OurStep, RefStep, TrainBenchConfig, parse_variant

    device = resolve_device(cfg.device)
    variants = [v.strip() for v in cfg.variants.split(",") if v.strip()]
    parsed = [(v, *parse_variant(v)) for v in variants]
    with tempfile.TemporaryDirectory(prefix="verydeep-e2e-") as tmp:
        root = ensure_jpegs(cfg, Path(cfg.data_dir) if cfg.data_dir else Path(tmp))
        n_images, n_classes = _count_images(root)
        needed = (cfg.warmup + cfg.steps) * cfg.batch_size
        if n_images < needed:
            raise ValueError(f"{root / 'train'} holds {n_images} images; one timed round needs "
                             f"(warmup {cfg.warmup} + steps {cfg.steps}) x batch {cfg.batch_size} = {needed}")
        num_classes = cfg.num_classes or n_classes
        tcfg = TrainBenchConfig(model=cfg.model, width=cfg.width, image_size=cfg.crop_size,
                                batch_size=cfg.batch_size, num_classes=num_classes, device=cfg.device,
                                amp=cfg.amp, seed=cfg.seed)
        from verydeep.models import create_model

        macs = forward_macs(create_model(cfg.model, num_classes=num_classes, width=cfg.width,
                                         head_size=max(1, cfg.crop_size // 32)), cfg.crop_size)
        samples = {name: [] for name, _, _ in parsed}
        mem: dict[str, float] = {}
        for epoch in range(cfg.repeats):
            for name, base, opts in parsed:
                torch.manual_seed(cfg.seed)
                ours = base == "ours"
                with backend_flags(device, benchmark=ours, tf32=ours):
                    step = OurStep(tcfg, device, opts) if ours else RefStep(tcfg, device)
                    loader = (our_loader if ours else reference_loader)(root, cfg, device, epoch)
                    batches = iter(loader)

                    def one_step():
                        batch = next(batches)
                        step(batch[0], batch[1])

                    reset_peak_memory(device)
                    _, _, rates = time_steps(one_step, device=device, steps=cfg.steps, warmup=cfg.warmup,
                                             repeats=1, images_per_step=cfg.batch_size)
                    mem[name] = max(mem.get(name, 0.0), peak_memory_mb(device))
                samples[name] += rates
                del step, loader, batches
                gc.collect()
    has_reference = any(base == "reference" for _, base, _ in parsed)
    results = []
    for name, base, _ in parsed:
        ips = statistics.median(samples[name])
        results.append(BenchResult(
            bench="e2e", variant=name, images_per_s=ips, ms_per_step=1000 * cfg.batch_size / ips,
            batch_size=cfg.batch_size, peak_memory_mb=mem[name], tflops=training_tflops(macs, ips),
            samples=samples[name], reference="reference" if base == "ours" and has_reference else None,
            notes=f"{n_images} JPEGs, S in [{cfg.scale_min}, {cfg.scale_max}], crop {cfg.crop_size}, "
                  f"{cfg.workers} workers",
        ))
    return results
