"""GPU-hours of a training run, estimated from measured throughput.

The measurement is training images/s of one net on one device: ``verydeep bench train
--preset paper --json FILE`` (VGG16 at 224, batch 256, the "ours" variant: the training
loop's own step), or a figure the user measured. Other nets are scaled by their forward
multiply-accumulates at the training crop (a net with twice the MACs trains at half the
images/s; the backward pass costs a fixed multiple of the forward for these conv nets). Data
loading is assumed to keep up.

Evaluation: each net's passes (a method at a test scale Q, shared by the rows that use it)
cost their forward MACs per validation image: dense, the fully-convolutional net on the whole
image and its mirror (Q x 4Q/3, ImageNet's usual 4:3 aspect); multi-crop, 50 crops at the
training crop (5x5 grid x 2 flips); centre, one crop and its mirror. A forward pass runs at
``EVAL_SPEEDUP`` x a training step's images/s for the same MACs (no backward, no update).

Wall-clock on N devices: the runs of the chain one after another, each on all N devices (data
parallel, the global batch unchanged), at the paper's measured efficiency (3.75x on 4 GPUs:
``SCALING_EFFICIENCY`` per device beyond the first), so wall-clock = GPU-hours / (N x 0.9375)
for N > 1.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from verydeep.config import Config
from verydeep.models.complexity import forward_macs
from verydeep.models.from_config import spec_from_config
from verydeep.models.vgg import VGG


EVAL_SPEEDUP = 3.0  # forward-only vs a training step (forward + backward ~ 3 forwards)
SCALING_EFFICIENCY = 3.75 / 4  # the paper's 4-GPU speed-up per GPU (Sec. 3.3)
DENSE_ASPECT = 4 / 3  # ImageNet's usual image shape: the dense pass sees Q x 4Q/3
MULTICROP_CROPS = 50  # 5x5 grid x 2 flips per test scale


@dataclass(frozen=True)
class Throughput:
    """Training images/s of ``model`` (registry name, width 1, ``crop`` px) on one device."""

    images_per_s: float
    model: str = "vgg16"
    crop: int = 224
    source: str = "given"


def throughput_from_bench(path: str | Path) -> Throughput:
    """The "ours" training figure of a ``verydeep bench train --json`` file (paper preset)."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a bench JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a bench JSON file (a {type(data).__name__}, not an object)")
    ours = [r for r in data.get("results", []) if r.get("bench") == "train" and r.get("variant") == "ours"]
    if not ours:
        raise ValueError(f"{path}: no 'ours' training figure (write one with verydeep bench train --preset paper "
                         f"--json FILE)")
    cfg = (data.get("config") or {}).get("train") or {}
    if cfg.get("width", 1.0) != 1.0:
        raise ValueError(f"{path}: measured at width {cfg['width']}; the estimate needs full-width nets "
                         "(--preset paper)")
    device = (data.get("machine") or {}).get("gpu") or (data.get("machine") or {}).get("device") or "?"
    return Throughput(images_per_s=float(ours[0]["images_per_s"]), model=cfg.get("model", "vgg16"),
                      crop=int(cfg.get("image_size", 224)), source=f"{path} ({device})")


@functools.lru_cache(maxsize=32)
def _macs(config: str, batch_norm: bool, width: float, head_size: int, crop: int) -> int:
    from verydeep.models.vgg import VGGSpec

    with torch.device("meta"):  # shapes only: no memory for 140M parameters
        model = VGG(VGGSpec(config=config, batch_norm=batch_norm, num_classes=1000, width=width, head_size=head_size))
    return forward_macs(model, crop)


def training_macs(cfg: Config) -> int:
    spec = spec_from_config(cfg.model, 1000, cfg.data.crop_size)
    return _macs(spec.config, spec.batch_norm, spec.width, spec.head_size, cfg.data.crop_size)


def reference_macs(throughput: Throughput) -> int:
    from verydeep.models.registry import resolve

    config, bn = resolve(throughput.model)
    return _macs(config, bn, 1.0, max(1, throughput.crop // 32), throughput.crop)


def training_images(cfg: Config, train_images: int) -> int:
    """Images the run processes at most: its epochs (a partial last batch counted whole: an
    upper bound), capped by ``train.max_iterations`` (the plateau rule may stop it earlier)."""
    steps = cfg.train.epochs * math.ceil(train_images / cfg.train.batch_size)
    if cfg.train.max_iterations:
        steps = min(steps, cfg.train.max_iterations)
    return steps * cfg.train.batch_size


def gpu_hours(cfg: Config, train_images: int, throughput: Throughput) -> float:
    """Device-hours to train ``cfg`` on ``train_images`` images at most."""
    rate = throughput.images_per_s * reference_macs(throughput) / training_macs(cfg)
    return training_images(cfg, train_images) / rate / 3600 if rate > 0 else math.inf


def round_up(hours: float, step: float = 0.1) -> float:
    """``hours`` rounded up to ``step`` (an estimate never reads 0 for a run that does work)."""
    return math.ceil(hours / step - 1e-9) * step if hours > 0 else 0.0


def wall_clock_hours(gpu_h: float, devices: int) -> float:
    """Hours on ``devices`` devices at the paper's measured scaling efficiency."""
    return gpu_h if devices <= 1 else gpu_h / (devices * SCALING_EFFICIENCY)


@functools.lru_cache(maxsize=128)
def _dense_macs(config: str, batch_norm: bool, width: float, head_size: int, h: int, w: int) -> int:
    from verydeep.models.fully_convolutional import fully_convolutional
    from verydeep.models.vgg import VGGSpec

    with torch.device("meta"):
        model = VGG(VGGSpec(config=config, batch_norm=batch_norm, num_classes=1000, width=width, head_size=head_size))
    return forward_macs(fully_convolutional(model), (h, w))


def pass_macs(cfg: Config, method: str, q: int) -> int:
    """Forward MACs per validation image of one evaluation pass (``method`` at test scale ``q``)."""
    spec = spec_from_config(cfg.model, 1000, cfg.data.crop_size)
    crop = cfg.data.crop_size
    if method == "dense":
        side = max(q, 32 * spec.head_size)  # smaller images are padded up to the net's minimum
        return 2 * _dense_macs(spec.config, spec.batch_norm, spec.width, spec.head_size, side, round(side * DENSE_ASPECT))
    one = _macs(spec.config, spec.batch_norm, spec.width, spec.head_size, crop)
    return (MULTICROP_CROPS if method == "multicrop" else 2) * one


def eval_gpu_hours(passes: list[tuple[Config, str, int]], val_images: int, throughput: Throughput) -> float:
    """Device-hours of evaluation ``passes`` ((net's config, method, Q)) on ``val_images`` images."""
    macs_per_s = throughput.images_per_s * reference_macs(throughput) * EVAL_SPEEDUP
    total = sum(pass_macs(cfg, method, q) for cfg, method, q in passes) * val_images
    return total / macs_per_s / 3600 if macs_per_s > 0 else math.inf
