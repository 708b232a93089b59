"""Embedded demo data: a small ImageNet-layout dataset a CPU learns in minutes.

Ten classes of objects that differ in *shape* only: colours are random and independent of the
class, backgrounds are cluttered (gradients, noise, strokes, arcs, blobs), the object's size
varies more than 4x, image sizes and aspect ratios vary. Written as ImageNet is distributed:
``train/<wnid>/<wnid>_<k>.JPEG``, a flat ``val/ILSVRC2012_val_<k>.JPEG`` with Kaggle's
``LOC_val_solution.csv`` (with the object's bounding box) and ``LOC_synset_mapping.txt``.
Deterministic by seed: every image is drawn from its own generator (seed, split, number).

Two class sets (``CLASS_SETS``, ``verydeep data demo --classes``): ``shapes`` (the default,
above) and ``alt``, ten other shapes with other wnids, drawn the same way: a second data set of
the same kind, to check that settings chosen on one carry to another.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from verydeep.data.demo_classes import CLASS_SETS

SUPERSAMPLE = 2  # shapes are drawn at 2x and box-filtered down: anti-aliased edges
CLUTTER = (4, 12)  # background strokes, arcs and blobs per image (inclusive range)
OCCLUDERS = (0, 2)  # strokes drawn over the object (inclusive range)
RADIUS = (0.11, 0.46)  # object radius, log-uniform, as a fraction of the shorter side (4.2x)
TILT_DEG = 30.0  # object rotation drawn from [-TILT_DEG, TILT_DEG]


def _circle(n=48, radius=1.0, cx=0.0, cy=0.0):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1)


def _regular(n, start=-np.pi / 2):
    t = start + np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _star():
    t = -np.pi / 2 + np.linspace(0, 2 * np.pi, 10, endpoint=False)
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _heart():
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], 1) / 16.5


# Each shape: list of (polygon in unit coordinates, fill 255 = add / 0 = cut out).
SHAPES = {
    "disc": [(_circle(), 255)],
    "ring": [(_circle(), 255), (_circle(radius=0.58), 0)],
    "triangle": [(_regular(3), 255)],
    "square": [(_regular(4, np.pi / 4) * 0.95, 255)],
    "star": [(_star(), 255)],
    "cross": [(np.array([[-.3, -1], [.3, -1], [.3, -.3], [1, -.3], [1, .3], [.3, .3], [.3, 1], [-.3, 1],
                         [-.3, .3], [-1, .3], [-1, -.3], [-.3, -.3]]), 255)],
    "crescent": [(_circle(), 255), (_circle(radius=0.82, cx=0.45, cy=-0.1), 0)],
    "arrow": [(np.array([[-1, -.22], [.15, -.22], [.15, -.6], [1, 0], [.15, .6], [.15, .22], [-1, .22]]), 255)],
    "heart": [(_heart(), 255)],
    "hourglass": [(np.array([[-.7, -1], [.7, -1], [.1, 0], [.7, 1], [-.7, 1], [-.1, 0]]), 255)],
    # the alt set
    "pentagon": [(_regular(5), 255)],
    "hexagon": [(_regular(6, 0.0), 255)],
    "ellipse": [(_circle() * np.array([1.0, 0.5]), 255)],
    "semicircle": [(np.concatenate([_circle(25)[:13], [[-1.0, 0.0]]]) * np.array([1, -1]) + [0, 0.4], 255)],
    "diamond": [(np.array([[0, -1], [.55, 0], [0, 1], [-.55, 0]]), 255)],
    "letter_L": [(np.array([[-.7, -1], [-.2, -1], [-.2, .5], [.7, .5], [.7, 1], [-.7, 1]]), 255)],
    "letter_T": [(np.array([[-1, -1], [1, -1], [1, -.5], [.25, -.5], [.25, 1], [-.25, 1], [-.25, -.5], [-1, -.5]]),
                  255)],
    "trapezoid": [(np.array([[-.45, -.6], [.45, -.6], [1, .6], [-1, .6]]), 255)],
    "frame": [(_regular(4, np.pi / 4) * 0.95, 255), (_regular(4, np.pi / 4) * 0.55, 0)],
    "chevron": [(np.array([[-1, -.9], [-.4, -.9], [.6, 0], [-.4, .9], [-1, .9], [0, 0]]), 255)],
}


def _colour(rng, avoid=None, min_dist=110.0):
    for _ in range(50):
        c = rng.integers(0, 256, 3)
        if avoid is None or np.linalg.norm(c - avoid) >= min_dist:
            return c
    return 255 - np.asarray(avoid)  # the complement is always far enough


def _background(rng, w, h):
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
    t = (t - t.min()) / max(1e-6, t.max() - t.min())
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img += rng.normal(0, 10, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), (c0 + c1) / 2


def _clutter(draw, rng, w, h, n):
    short = min(w, h)
    for _ in range(n):
        kind = rng.integers(3)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if kind == 0:  # stroke
            length, a = rng.uniform(0.1, 0.5) * short, rng.uniform(0, np.pi)
            draw.line([(x, y), (x + length * np.cos(a), y + length * np.sin(a))], fill=colour,
                      width=int(rng.integers(1, 4)))
        elif kind == 1:  # arc
            r = rng.uniform(0.05, 0.2) * short
            start = rng.uniform(0, 360)
            draw.arc([x - r, y - r, x + r, y + r], start, start + rng.uniform(40, 160), fill=colour,
                     width=int(rng.integers(1, 3)))
        else:  # small blob
            rx, ry = rng.uniform(0.01, 0.05, 2) * short
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)


def render_demo_image(rng: np.random.Generator, shape: str, min_short: int = 72, max_short: int = 128):
    """One image of ``shape``; returns (PIL image, bounding box x0, y0, x1, y1)."""
    short = int(rng.integers(min_short, max_short + 1))
    long = int(short * math.exp(rng.uniform(0.0, math.log(1.7))))
    w, h = (long, short) if rng.random() < 0.6 else (short, long)
    img, bg_mean = _background(rng, w, h)
    _clutter(ImageDraw.Draw(img), rng, w, h, int(rng.integers(CLUTTER[0], CLUTTER[1] + 1)))

    # Object: radius log-uniform in RADIUS of the shorter side, near the centre, tilted by up
    # to TILT_DEG and mildly stretched. (Free rotation makes the ten classes a
    # rotation-invariance problem that a CPU-sized net needs far longer than a demo to learn.)
    r = short * math.exp(rng.uniform(math.log(RADIUS[0]), math.log(RADIUS[1])))
    cx = w / 2 + rng.uniform(-0.15, 0.15) * short
    cy = h / 2 + rng.uniform(-0.15, 0.15) * short
    a = math.radians(rng.uniform(-TILT_DEG, TILT_DEG))
    stretch = np.diag(rng.uniform(0.85, 1.15, 2))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    s = SUPERSAMPLE
    mask = Image.new("L", (w * s, h * s), 0)
    md = ImageDraw.Draw(mask)
    pts_all = []
    for poly, fill in SHAPES[shape]:
        pts = (poly @ stretch.T @ rot.T) * r + np.array([cx, cy])
        if fill:
            pts_all.append(pts)
        md.polygon([(float(x) * s, float(y) * s) for x, y in pts], fill=fill)
    mask = mask.resize((w, h), Image.Resampling.BOX)
    colour = _colour(rng, bg_mean)
    fg = np.clip(colour[None, None] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.composite(Image.fromarray(fg), img, mask)
    # A stroke or two over the object: partial occlusion, as in real photos.
    _clutter(ImageDraw.Draw(img), rng, w, h, int(rng.integers(OCCLUDERS[0], OCCLUDERS[1] + 1)))
    pts = np.concatenate(pts_all)
    box = (max(0, int(pts[:, 0].min())), max(0, int(pts[:, 1].min())),
           min(w - 1, int(pts[:, 0].max())), min(h - 1, int(pts[:, 1].max())))
    return img, box


def make_demo_dataset(out_dir, seed: int = 0, train_per_class: int = 240, val_per_class: int = 60,
                      min_short: int = 72, max_short: int = 128, quality: int = 90, progress: bool = True,
                      classes: str = "shapes") -> dict:
    """Write the demo dataset to ``out_dir`` (see module doc), its classes the set named
    ``classes`` (``CLASS_SETS``); returns counts and paths."""
    from verydeep.progress import progress_bar

    if classes not in CLASS_SETS:
        raise ValueError(f"demo classes {classes!r}; expected one of {', '.join(CLASS_SETS)}")
    class_list = CLASS_SETS[classes]
    out = Path(out_dir)
    (out / "val").mkdir(parents=True, exist_ok=True)
    n_classes = len(class_list)
    total = n_classes * (train_per_class + val_per_class)
    bar = progress_bar(total=total, desc="demo images", unit="img", disable=not progress)
    for c, (wnid, name) in enumerate(class_list):
        d = out / "train" / wnid
        d.mkdir(parents=True, exist_ok=True)
        for k in range(train_per_class):
            img, _ = render_demo_image(np.random.default_rng([seed, 0, c, k]), name, min_short, max_short)
            img.save(d / f"{wnid}_{k}.JPEG", quality=quality)
            bar.update()
    # Validation: classes balanced, order shuffled by the seed, as ILSVRC2012_val_*.
    labels = np.random.default_rng([seed, 1]).permutation(np.repeat(np.arange(n_classes), val_per_class))
    rows = []
    for k, c in enumerate(labels, 1):
        wnid, name = class_list[c]
        img, box = render_demo_image(np.random.default_rng([seed, 2, k]), name, min_short, max_short)
        image_id = f"ILSVRC2012_val_{k:08d}"
        img.save(out / "val" / f"{image_id}.JPEG", quality=quality)
        rows.append(f"{image_id},{wnid} {box[0]} {box[1]} {box[2]} {box[3]}")
        bar.update()
    bar.close()
    (out / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    (out / "LOC_synset_mapping.txt").write_text("".join(f"{w} {n}\n" for w, n in class_list))
    return {"root": str(out), "classes": n_classes, "train": n_classes * train_per_class,
            "val": len(labels)}
