"""GPU-hours of a training run, estimated from measured throughput.

The measurement is training images/s of one net on one device: ``verydeep bench train
--preset paper --json FILE`` (VGG16 at 224, batch 256, the "ours" variant: the training
loop's own step), or a figure the user measured. Other nets are scaled by their forward
multiply-accumulates at the training crop (a net with twice the MACs trains at half the
images/s; the backward pass costs a fixed multiple of the forward for these conv nets). Data
loading is assumed to keep up, and N devices to give N times one (the paper measured 3.75x on
4 GPUs, so wall-clock hours may be ~7% above GPU-hours / N).
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


@dataclass(frozen=True)
class Throughput:
    """Training images/s of ``model`` (registry name, width 1, ``crop`` px) on one device."""

    images_per_s: float
    model: str = "vgg16"
    crop: int = 224
    source: str = "given"


def throughput_from_bench(path: str | Path) -> Throughput:
    """The "ours" training figure of a ``verydeep bench train --json`` file (paper preset)."""
    data = json.loads(Path(path).read_text())
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
    """Images the run processes at most: its epochs, capped by ``train.max_iterations``
    (the plateau rule may stop it earlier)."""
    steps = cfg.train.epochs * (train_images // cfg.train.batch_size)
    if cfg.train.max_iterations:
        steps = min(steps, cfg.train.max_iterations)
    return steps * cfg.train.batch_size


def gpu_hours(cfg: Config, train_images: int, throughput: Throughput) -> float:
    """Device-hours to train ``cfg`` on ``train_images`` images at most."""
    rate = throughput.images_per_s * reference_macs(throughput) / training_macs(cfg)
    return training_images(cfg, train_images) / rate / 3600 if rate > 0 else math.inf
