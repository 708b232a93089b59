"""Data-pipeline throughput, ours vs the standard torchvision pipeline, in one run.

Per worker: every pipeline runs in this process with one thread (a loader worker is one
process with one thread), so images/s here is images/s per worker; N workers scale it about
N-fold while cores last. Each of ours is compared with the reference doing the same transform
and handing over the same dtype (``REFERENCE_OF``):

* reference: torchvision ``ImageFolder`` + PIL decode + ``RandomResizedCrop(224)`` +
  ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize``, ``DataLoader`` batching (float32);
  ours_random_resized_crop: our loader with the same transform, float32 normalized;
* reference_scale_jitter: the paper's transform written the usual torchvision way
  (``Resize(S)`` with random S, ``RandomCrop(224)``, flip, ``ToTensor``, ``Normalize``, float32);
  ours_scale_jitter: our loader, S uniform in [256, 512], crop 224, flip, colour shift, mean
  subtraction (the paper's full training transform), float32 normalized (a CPU run's workers);
* reference_scale_jitter_uint8: the same torchvision transform ending in ``PILToTensor``
  (uint8, as a GPU run would hand it over); ours_scale_jitter_worker: our worker's share of a
  GPU run, decoded and cropped uint8 batches (the float conversion and normalization run on
  the device, ``verydeep.data.loaders.normalize_batch``);
* ours_gpu_path_worker: a worker's share on the GPU data path (``data.decode: gpu``): read the
  bytes, parse the header, draw the geometry; the decoding is the device's;
* decode_only: PIL open + decode + RGB, for orientation.

Pipelines alternate over ``rounds``, each of ours right after its reference, and the median
round counts, so a neighbour's burst on a shared machine hurts all alike and neither the
luckiest nor the unluckiest round decides; ``ratio_per_round`` gives the spread of each pair's
ratio over the rounds.

    verydeep bench data --images 400 --repeats 3
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import tempfile
import time
from datetime import datetime, timezone

import torch

from verydeep.bench.common import cpu_model
from verydeep.bench.jpeg_files import write_jpeg_files


def _time_loader(loader, n_images: int) -> float:
    t0 = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += len(batch[1])
    dt = time.perf_counter() - t0
    return seen / dt


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


# each of ours -> the reference doing the same transform with the same output dtype
REFERENCE_OF = {"ours_random_resized_crop": "reference", "ours_scale_jitter": "reference_scale_jitter",
                "ours_scale_jitter_worker": "reference_scale_jitter_uint8"}


def _reference_loader(root: str, batch_size: int, jitter: tuple[int, int] | None, crop: int, seed: int,
                      uint8: bool = False):
    from torchvision import datasets
    from torchvision import transforms as T

    norm = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    to_tensor = [T.PILToTensor()] if uint8 else [T.ToTensor(), norm]
    if jitter is None:
        tf = T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), *to_tensor])
    else:
        lo, hi = jitter
        tf = T.Compose([T.Lambda(lambda img: T.functional.resize(img, random.randint(lo, hi))),
                        T.RandomCrop(crop), T.RandomHorizontalFlip(), *to_tensor])
    torch.manual_seed(seed)
    random.seed(seed)
    ds = datasets.ImageFolder(root, transform=tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True)


def _our_loader(samples, batch_size: int, seed: int, **cfg_kwargs):
    from verydeep.data import DataConfig, build_train_loader

    cfg = DataConfig(workers=0, **cfg_kwargs)
    return build_train_loader(cfg, samples, batch_size, seed=seed, epoch=0)


class _WorkerShare:
    """The raw batches of a ``TrainLoader`` (what its workers build), without the consumer's
    float conversion and normalization."""

    def __init__(self, loader):
        self.loader = loader
        self.loader.dataset.raw = True  # as for a CUDA run

    def __iter__(self):
        for b in range(len(self.loader)):
            images, _, labels, _ = self.loader.dataset[(self.loader.epoch, b)]
            yield images, labels


class _GpuPathWorkerShare:
    """The encoded batches of a ``TrainLoader`` on the GPU data path, as its workers build them."""

    def __init__(self, loader):
        self.loader = loader
        self.loader.dataset.encoded = True

    def __iter__(self):
        for b in range(len(self.loader)):
            batch = self.loader.dataset[(self.loader.epoch, b)]
            yield None, batch.labels


class _DecodeOnly:
    def __init__(self, samples, batch_size):
        self.samples, self.batch_size = samples, batch_size

    def __iter__(self):
        from PIL import Image

        for i in range(0, len(self.samples) - self.batch_size + 1, self.batch_size):
            for path, _ in self.samples[i:i + self.batch_size]:
                with Image.open(path) as img:
                    img.convert("RGB")
            yield None, [0] * self.batch_size


def run_data_pipeline_bench(images: int = 400, batch_size: int = 32, rounds: int = 3, scale_min: int = 256,
                            scale_max: int = 512, crop: int = 224, seed: int = 0, data_dir: str | None = None,
                            threads: int = 1) -> dict:
    """Images/s per worker of each pipeline (see module doc) and the ratios ours / reference."""
    torch.set_num_threads(threads)
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="verydeep_bench_")
        data_dir = tmp.name
    try:
        samples = write_jpeg_files(data_dir, n=images, seed=seed)
        root = f"{data_dir}/train"
        # each of ours right after its reference: a pair is timed at nearly the same moment
        pipelines = {
            "reference": lambda: _reference_loader(root, batch_size, None, crop, seed),
            "ours_random_resized_crop": lambda: _our_loader(samples, batch_size, seed, train_transform="random_resized_crop",
                                                            scale_min=crop, scale_max=crop, crop_size=crop,
                                                            colour_shift=0.0, normalize="mean_std"),
            "reference_scale_jitter": lambda: _reference_loader(root, batch_size, (scale_min, scale_max), crop, seed),
            "ours_scale_jitter": lambda: _our_loader(samples, batch_size, seed, scale_min=scale_min,
                                                     scale_max=scale_max, crop_size=crop),
            "reference_scale_jitter_uint8": lambda: _reference_loader(root, batch_size, (scale_min, scale_max), crop,
                                                                      seed, uint8=True),
            "ours_scale_jitter_worker": lambda: _WorkerShare(_our_loader(samples, batch_size, seed, scale_min=scale_min,
                                                                         scale_max=scale_max, crop_size=crop)),
            "ours_gpu_path_worker": lambda: _GpuPathWorkerShare(_our_loader(samples, batch_size, seed,
                                                                            scale_min=scale_min, scale_max=scale_max,
                                                                            crop_size=crop)),
            "decode_only": lambda: _DecodeOnly(samples, batch_size),
        }
        # Warm-up: imports, first decodes (page cache) for every pipeline.
        for make in pipelines.values():
            loader = make()
            next(iter(loader))
        per_round: dict[str, list[float]] = {k: [] for k in pipelines}
        for _ in range(rounds):
            for name, make in pipelines.items():
                per_round[name].append(round(_time_loader(make(), images), 1))
        median = {k: statistics.median(v) for k, v in per_round.items()}
        sizes = [os.path.getsize(path) for path, _ in samples]
        return {
            "images_per_s_per_worker": {k: round(v, 1) for k, v in median.items()},
            "rounds": per_round,
            "ratio_vs_reference": {k: round(median[k] / median[ref], 2) for k, ref in REFERENCE_OF.items()},
            # ours / its reference in each round (timed one after the other): median, min, max
            "ratio_per_round": {k: _spread([a / b for a, b in zip(per_round[k], per_round[ref])])
                                for k, ref in REFERENCE_OF.items()},
            "setup": {"images": images, "size": "500x375", "jpeg_quality": 90,
                      "mean_file_kb": round(sum(sizes) / len(sizes) / 1000, 1), "batch_size": batch_size,
                      "scale": [scale_min, scale_max], "crop": crop, "threads": threads, "rounds": rounds},
            "machine": {"cpu": cpu_model(), "cores": torch.multiprocessing.cpu_count() if hasattr(torch.multiprocessing, "cpu_count") else None,
                        "python": platform.python_version(), "torch": torch.__version__,
                        "pillow": __import__("PIL").__version__},
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        }
    finally:
        if tmp is not None:
            tmp.cleanup()
