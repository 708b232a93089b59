"""The paper's transforms (Sec. 3.1 training, Sec. 3.2 testing) and the modern option.

Where things happen, in the paper's words:

* training scale S: ``sample_scale`` draws it (fixed, or uniform in [scale_min, scale_max]);
* the random 224 crop of the image rescaled to S: ``scale_jitter_params``;
* random RGB colour shift (Krizhevsky et al.): ``colour_shift_rgb``;
* mean RGB subtraction / mean-std normalization: ``normalization``, ``normalize_`` and ``to_normalized_batch``;
* test scale Q and the centre crop or whole image: ``eval_geometry`` and ``eval_resize``.

Speed: the crop is cut from the *decoded* image and resized in one step
(``Image.resize(size, box=...)``). Pillow's resampler maps output pixels to the same source
coordinates as "rescale the whole image to S, then crop", so the result is the same
while only crop x crop output pixels are computed.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from verydeep.data.checked_cache import finite_vector
from verydeep.data.config import TRAINING_SET_STATS, DataConfig
from verydeep.data.decode import load_image, original_size
from verydeep.data.errors import DataError

RESAMPLE = Image.Resampling.BILINEAR  # torchvision's default filter (antialiased in PIL)


# ----------------------------------------------------------------------------- statistics


@functools.lru_cache(maxsize=8)
def _read_stats(path: str, mtime_ns: int) -> dict:
    try:
        stats = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as e:
        raise DataError(f"stats_file {path}: cannot read: {e}") from None
    if not isinstance(stats, dict):
        raise DataError(f"stats_file {path}: expected a JSON object (write it with `verydeep data stats`)")
    for key in ("mean", "pca_eigval", "pca_eigvec"):
        if key not in stats:
            raise DataError(f"stats_file {path}: missing key {key!r} (write it with `verydeep data stats`)")
    try:
        return {**stats, **checked_stats(stats)}
    except ValueError as e:
        raise DataError(f"stats_file {path}: {e}") from None


def checked_stats(stats: dict) -> dict:
    """The statistics among mean, std, pca_eigval (3 finite numbers each; std > 0) and
    pca_eigvec (3x3 finite) that ``stats`` holds, as floats; ValueError naming the key."""
    out = {k: finite_vector(stats[k], 3, k) for k in ("mean", "std", "pca_eigval") if k in stats}
    if "std" in out and min(out["std"]) <= 0:
        raise ValueError(f"std must be positive, got {out['std']!r}")
    if "pca_eigvec" in stats:
        rows = stats["pca_eigvec"]
        if not isinstance(rows, list) or len(rows) != 3:
            raise ValueError(f"pca_eigvec must be a 3x3 matrix, got {rows!r}")
        out["pca_eigvec"] = [finite_vector(r, 3, f"pca_eigvec[{i}]") for i, r in enumerate(rows)]
    return out


def dataset_stats(cfg: DataConfig) -> dict:
    """mean, std, pca_eigval, pca_eigvec: from ``cfg.stats_file`` when set, else from ``cfg``."""
    out = {"mean": cfg.mean, "std": cfg.std, "pca_eigval": cfg.pca_eigval, "pca_eigvec": cfg.pca_eigvec}
    if cfg.stats_file == TRAINING_SET_STATS:
        raise DataError("data.stats_file=train is resolved when training starts "
                        "(verydeep.data.stats.resolve_stats); this config was not")
    if cfg.stats_file:
        if not os.path.isfile(cfg.stats_file):
            raise DataError(f"stats_file {cfg.stats_file} not found")
        stats = _read_stats(os.path.abspath(cfg.stats_file), os.stat(cfg.stats_file).st_mtime_ns)
        out.update({k: stats[k] for k in out if k in stats})
    return out


def normalization(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) float32 tensors of shape [3] in [0, 1] units, for :func:`normalize_`.

    ``mean_std``: the statistics as they are. ``mean_rgb``: std = 1 (mean subtraction only).
    ``caffe``: std = 1/255, so (x/255 + shift - mean) / std = x + 255 shift - 255 mean: pixels
    in 0..255 minus the mean RGB, the colour shift in the same units (the paper's input)."""
    stats = dataset_stats(cfg)
    if cfg.normalize == "mean_std":
        std = torch.tensor(stats["std"], dtype=torch.float32)
    elif cfg.normalize == "caffe":
        std = torch.full((3,), 1 / 255, dtype=torch.float32)
    else:
        std = torch.ones(3)
    return torch.tensor(stats["mean"], dtype=torch.float32), std


def pca_basis(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    stats = dataset_stats(cfg)
    return np.asarray(stats["pca_eigval"], dtype=np.float64), np.asarray(stats["pca_eigvec"], dtype=np.float64)


def colour_shift_rgb(alpha: np.ndarray, eigval: np.ndarray, eigvec: np.ndarray) -> np.ndarray:
    """Krizhevsky et al. 2012: add sum_i alpha_i lambda_i p_i to every pixel; the columns of
    ``eigvec`` are the eigenvectors p_i, ``eigval`` the lambda_i."""
    return eigvec @ (np.asarray(alpha, dtype=np.float64) * eigval)


# ----------------------------------------------------------------------------- training


def resized_size(width: int, height: int, short: int) -> tuple[int, int]:
    """Isotropic rescale so the shorter side is ``short`` (torchvision's Resize(int) rounding)."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def sample_scale(rng: np.random.Generator, cfg: DataConfig) -> int:
    """Training scale S: fixed, or uniform over the integers of [scale_min, scale_max]."""
    if cfg.scale_min == cfg.scale_max:
        return cfg.scale_min
    return int(rng.integers(cfg.scale_min, cfg.scale_max + 1))


@dataclass
class CropParams:
    scale: int | None  # S (scale_jitter) or None (random_resized_crop)
    resized: tuple[int, int] | None  # (width, height) of the image rescaled to S
    offset: tuple[int, int] | None  # crop's top-left corner in the rescaled image
    box: tuple[float, float, float, float]  # the crop in decoded-image coordinates
    flip: bool
    alpha: np.ndarray  # colour-shift alphas (zeros when disabled)


def scale_jitter_params(rng, width: int, height: int, scale: int, crop: int) -> tuple:
    """Rescaled size (W, H) for S=``scale``, the random crop's corner in it, and the crop's
    box in the coordinates of the ``width`` x ``height`` image."""
    rw, rh = resized_size(width, height, scale)
    x0 = int(rng.integers(0, rw - crop + 1))
    y0 = int(rng.integers(0, rh - crop + 1))
    sx, sy = width / rw, height / rh
    return (rw, rh), (x0, y0), (x0 * sx, y0 * sy, (x0 + crop) * sx, (y0 + crop) * sy)


def _to_decoded(box, img: Image.Image):
    """A box in stored-image coordinates -> coordinates of the (maybe draft-decoded) image."""
    ow, oh = original_size(img)
    fx, fy = img.width / ow, img.height / oh
    return (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)


def random_resized_crop_box(rng, width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params, drawn from ``rng``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            return (x0, y0, x0 + w, y0 + h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    x0, y0 = (width - w) // 2, (height - h) // 2
    return (x0, y0, x0 + w, y0 + h)


def draw_scale(rng: np.random.Generator, cfg: DataConfig) -> int | None:
    """A sample's first choice: its training scale S (scale_jitter), None for random_resized_crop."""
    return sample_scale(rng, cfg) if cfg.train_transform == "scale_jitter" else None


def draw_geometry(rng: np.random.Generator, cfg: DataConfig, width: int, height: int,
                  scale: int | None) -> CropParams:
    """A sample's other choices, after S, for an image stored at ``width`` x ``height``: the
    crop, the flip, the colour alphas, in that order. Every decoder (PIL here, the GPU in
    ``verydeep.data.gpu_decode``) takes its samples' geometry from this and :func:`draw_scale`,
    so a sample does not depend on where it was decoded."""
    crop = cfg.crop_size
    if scale is not None:
        resized, offset, box = scale_jitter_params(rng, width, height, scale, crop)
    else:
        resized, offset = None, None
        box = random_resized_crop_box(rng, width, height, cfg.rrc_scale, cfg.rrc_ratio)
    flip = bool(rng.random() < 0.5) if cfg.flip else False
    alpha = rng.normal(0.0, cfg.colour_shift, 3) if cfg.colour_shift > 0 else np.zeros(3)
    return CropParams(scale, resized, offset, box, flip, alpha)


def colour_shift(cfg: DataConfig, alpha: np.ndarray) -> np.ndarray:
    """The RGB shift (float32, [0, 1] units) of colour alphas ``alpha``; zeros when disabled."""
    if cfg.colour_shift <= 0:
        return np.zeros(3, dtype=np.float32)
    eigval, eigvec = pca_basis(cfg)
    return colour_shift_rgb(alpha, eigval, eigvec).astype(np.float32)


def train_sample(path, cfg: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, CropParams]:
    """Decode ``path`` and apply the training transform with choices drawn from ``rng`` in a
    fixed order (S, crop, flip, alphas). Returns the uint8 crop [crop, crop, 3] (flipped), the
    RGB colour shift to add in [0, 1] units, and the parameters drawn."""
    crop = cfg.crop_size
    scale = draw_scale(rng, cfg)
    img = load_image(path, scale if scale is not None and cfg.draft else None)
    params = draw_geometry(rng, cfg, *original_size(img), scale)
    out = img.resize((crop, crop), RESAMPLE, box=_to_decoded(params.box, img))
    if params.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out), colour_shift(cfg, params.alpha), params


def normalize_(x: torch.Tensor, shifts: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """In place on float32 pixel values ``x`` [B, 3, H, W] in 0..255 (any memory format, any
    device): (x / 255 + shift - mean) / std with per-image RGB ``shifts`` [B, 3], as one
    multiply and one add over the batch. Returns ``x``."""
    mean, std = mean.to(x.device), std.to(x.device)
    scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
    offset = ((shifts.to(x.device, non_blocking=True) - mean) / std).view(-1, 3, 1, 1)
    return x.mul_(scale).add_(offset)


def to_normalized_batch(images: np.ndarray, shifts: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] + per-image RGB shifts [B, 3] -> float32 [B, 3, H, W], normalized
    (:func:`normalize_`)."""
    out = torch.from_numpy(np.ascontiguousarray(images)).float()
    return normalize_(out, torch.from_numpy(np.ascontiguousarray(shifts, dtype=np.float32)), mean, std)


# ----------------------------------------------------------------------------- evaluation


def eval_geometry(width: int, height: int, scale: int, crop: int | None):
    """Rescaled size (W, H) for test scale Q=``scale`` and the centre-crop box
    (left, top, right, bottom) in rescaled coordinates (None for the whole image)."""
    rw, rh = resized_size(width, height, scale)
    if crop is None:
        return (rw, rh), None
    if crop > min(rw, rh):
        raise DataError(f"crop {crop} is larger than the image rescaled to Q={scale} ({rw}x{rh})")
    left, top = int(round((rw - crop) / 2.0)), int(round((rh - crop) / 2.0))
    return (rw, rh), (left, top, left + crop, top + crop)


def eval_resize(img: Image.Image, scale: int, crop: int | None) -> Image.Image:
    """Rescale the shorter side to Q and take the centre crop (or the whole image)."""
    (rw, rh), c = eval_geometry(*original_size(img), scale, crop)
    if c is None:
        return img.resize((rw, rh), RESAMPLE)
    sx, sy = img.width / rw, img.height / rh
    return img.resize((crop, crop), RESAMPLE, box=(c[0] * sx, c[1] * sy, c[2] * sx, c[3] * sy))


def load_eval_image(path, scale: int, crop: int | None, draft: bool = True) -> np.ndarray:
    return np.asarray(eval_resize(load_image(path, scale if draft else None), scale, crop))


def eval_transform(cfg: DataConfig, scale: int | None = None, crop: int | None | str = "default"):
    """A callable: path or PIL image -> normalized float32 tensor [3, H, W] at test scale
    ``scale`` (default ``cfg.eval_scale``) with a centre ``crop`` (default ``cfg.eval_crop``;
    None: the whole rescaled image)."""
    scale = cfg.eval_scale if scale is None else scale
    crop = cfg.eval_crop if crop == "default" else crop
    mean, std = normalization(cfg)

    def transform(item) -> torch.Tensor:
        img = item if isinstance(item, Image.Image) else load_image(item, scale if cfg.draft else None)
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(eval_resize(img, scale, crop)).transpose(2, 0, 1)[None]
        return to_normalized_batch(arr, np.zeros((1, 3), np.float32), mean, std)[0]

    return transform
