"""ImageNet-sized JPEG files for benchmarks: 500x375 (ImageNet's typical size), quality 90,
random but photo-like content (smooth colour fields, edges and sensor-like noise, so file
sizes and decode cost resemble real photos rather than white noise). Deterministic by seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def random_photo(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    coarse = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 15))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        x1, y1 = x0 + rng.uniform(10, width / 2), y0 + rng.uniform(10, height / 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    arr = np.asarray(img).astype(np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_jpeg_files(out_dir, n: int = 400, classes: int = 10, width: int = 500, height: int = 375,
                     quality: int = 90, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` JPEGs in ``out_dir/train/<class>/`` (ImageFolder layout); returns (path, label).
    Existing files are reused (same seed, same files)."""
    root = Path(out_dir) / "train"
    samples = []
    for i in range(n):
        label = i % classes
        path = root / f"n{label:08d}" / f"img_{i:06d}.JPEG"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            random_photo(np.random.default_rng([seed, i]), width, height).save(path, quality=quality)
        samples.append((str(path), label))
    return samples
