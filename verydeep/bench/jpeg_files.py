"""ImageNet-like JPEG files for benchmarks: 500x375 (ImageNet's typical size), quality 90,
about 110 KB each (ImageNet's average file), random but photo-like content: smooth colour
fields, shapes with edges, a mid-frequency texture and sensor-like noise, so that a file's
size, and with it the entropy decoder's work, is a real photo's rather than a cartoon's (the
smooth fields and shapes alone give 45 KB). Deterministic by seed; generated in parallel."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

NOISE_SIGMA = 15.0  # per-pixel noise (levels)
TEXTURE_SIGMA = 45.0  # a 4x-upsampled noise field: texture at a quarter of the resolution


def random_photo(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    coarse = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 15))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        x1, y1 = x0 + rng.uniform(10, width / 2), y0 + rng.uniform(10, height / 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    arr = np.asarray(img).astype(np.float32)
    texture = rng.normal(128, TEXTURE_SIGMA, (height // 4 + 1, width // 4 + 1, 3))
    texture = Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8)).resize((width, height),
                                                                               Image.Resampling.BICUBIC)
    arr += np.asarray(texture).astype(np.float32) - 128
    arr += rng.normal(0, NOISE_SIGMA, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write(job: tuple[str, int, int, int, int, int]) -> None:
    path, seed, i, width, height, quality = job
    random_photo(np.random.default_rng([seed, i]), width, height).save(path, quality=quality)


def write_jpeg_files(out_dir, n: int = 400, classes: int = 10, width: int = 500, height: int = 375,
                     quality: int = 90, seed: int = 0, workers: int | None = None) -> list[tuple[str, int]]:
    """``n`` JPEGs in ``out_dir/train/<class>/`` (ImageFolder layout); returns (path, label).
    Existing files are reused (same seed, same files). ``workers`` processes generate the
    missing ones (None: one per core, for more than a few dozen files)."""
    root = Path(out_dir) / "train"
    samples, jobs = [], []
    for i in range(n):
        label = i % classes
        path = root / f"n{label:08d}" / f"img_{i:06d}.JPEG"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((str(path), seed, i, width, height, quality))
        samples.append((str(path), label))
    workers = workers if workers is not None else (os.cpu_count() or 1) if len(jobs) > 32 else 1
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write, jobs, chunksize=16))
    else:
        for job in jobs:
            _write(job)
    return samples
