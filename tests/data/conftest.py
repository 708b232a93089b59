"""Small real image files for the data-pipeline tests."""

import numpy as np
import pytest
from PIL import Image

from verydeep.data import DataConfig


def write_image(path, w=40, h=30, seed=0, fmt="JPEG", mode="RGB"):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt, quality=90)
    return path


def write_colour_images(folder):
    """Four 8x8 PNGs of one colour each (red, green, blue, white): a mean known by hand."""
    paths = []
    for k, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]):
        p = folder / f"img{k}.png"
        Image.new("RGB", (8, 8), colour).save(p)
        paths.append(str(p))
    return paths


def write_class_folders(split_dir, classes, per_class=3, seed=0):
    for c, wnid in enumerate(classes):
        for k in range(per_class):
            write_image(split_dir / wnid / f"{wnid}_{k}.JPEG", 32 + 3 * k, 28 + 2 * c, seed=seed + 100 * c + k)


def write_flat_val(val_dir, n, seed=0):
    for k in range(1, n + 1):
        write_image(val_dir / f"ILSVRC2012_val_{k:08d}.JPEG", 36, 30, seed=seed + k)


WNIDS = ["n01440764", "n01443537", "n01484850"]


@pytest.fixture
def cfg_for(tmp_path):
    def make(root, **kw):
        kw.setdefault("index_cache", str(tmp_path / "index_cache"))
        kw.setdefault("workers", 0)
        return DataConfig(root=str(root), **kw)

    return make


@pytest.fixture
def train_root(tmp_path):
    root = tmp_path / "imagenet"
    write_class_folders(root / "train", WNIDS, per_class=3)
    return root
