"""The input convention a net was trained with, and the check that a run starting from another
net's weights (``model.init_from``, ``model.weights``) feeds its layers the same kind of input;
a fine-tuning run (``model.pretrained``) takes the convention of its file instead.

The paper's nets take pixels in 0..255 minus the mean RGB (``data.normalize: caffe``);
torchvision's take (x - mean) / std in [0, 1] (``mean_std``). The two differ by a factor of
about 255 / 0.23 in the first layer's input, so weights trained under one convention and
fine-tuned under the other start from a net that sees garbage. A training checkpoint records
its convention in its config (``data``), an exported file in its ``preprocessing``; the
authors' Caffe weights (``model.caffe_bgr``) are the Caffe convention by definition. A bare
state dict records none: for fine-tuning it is taken to be torchvision's, with a warning.
"""

from __future__ import annotations

import dataclasses
import logging

from verydeep.checkpoint import Checkpoint, load
from verydeep.config import Config
from verydeep.data.config import IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS
from verydeep.errors import CheckpointError

log = logging.getLogger(__name__)

# The released Caffe models' mean pixel (RGB order), in [0, 1] units as configs hold means.
CAFFE_MEAN_PIXEL = [123.68 / 255, 116.779 / 255, 103.939 / 255]
# Means closer than this (in 0..255 pixel levels) are the same convention for fine-tuning: the
# training set's own mean and ImageNet's published one differ by a few levels.
MEAN_TOLERANCE_LEVELS = 3.0
# torchvision's pretrained weights: (x - mean) / std on RGB in [0, 1], ImageNet's mean and std.
TORCHVISION_CONVENTION = {"normalize": "mean_std", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def recorded_convention(ckpt: Checkpoint, *, caffe_bgr: bool = False) -> dict | None:
    """``{"normalize", "mean", "std"}`` recorded in a weights file; None if it records none."""
    if caffe_bgr:
        return {"normalize": "caffe", "mean": CAFFE_MEAN_PIXEL, "std": [1.0, 1.0, 1.0]}
    data = ckpt.input_convention
    if not isinstance(data, dict) or data.get("normalize") not in NORMALIZATIONS:
        return None
    return {k: data.get(k) for k in ("normalize", "mean", "std")}


def convention_mismatch(source: dict, run: dict) -> tuple[str, str] | None:
    """``("refuse" | "warn", why)`` when a net trained with ``source`` would be fed ``run``'s inputs."""
    if source["normalize"] != run["normalize"]:
        return "refuse", f"it was trained on {source['normalize']} inputs and this run feeds {run['normalize']}"
    keys = ("mean", "std") if run["normalize"] == "mean_std" else ("mean",)
    for key in keys:
        if source.get(key) is None:
            continue
        # mean_std compares in its own units; caffe and mean_rgb in pixel levels
        unit = 1.0 if run["normalize"] == "mean_std" else 255.0
        tolerance = 0.02 if run["normalize"] == "mean_std" else MEAN_TOLERANCE_LEVELS
        gap = max(abs(a - b) for a, b in zip(source[key], run[key])) * unit
        if gap > tolerance:
            return "warn", (f"its {key} {[round(v * unit, 3) for v in source[key]]} differs from this run's "
                            f"{[round(v * unit, 3) for v in run[key]]} by up to {gap:.3g}")
    return None


def check_start_weights(cfg: Config, *, warn: bool = True) -> None:
    """Refuse to start from weights trained with another normalization; warn (loudly, when
    ``warn``) when their recorded mean or std differs or they record no convention at all."""
    source = cfg.model.init_from or cfg.model.weights
    if not source:
        return
    key = "model.init_from" if cfg.model.init_from else "model.weights"
    recorded = recorded_convention(load(source), caffe_bgr=cfg.model.caffe_bgr)
    run = {"normalize": cfg.data.normalize, "mean": cfg.data.mean, "std": cfg.data.std}
    if recorded is None:
        if warn:
            log.warning("%s=%s records no input convention (a bare state dict?): make sure it was trained on "
                        "%s inputs as this run's data.normalize says (torchvision's weights: mean_std; the "
                        "authors' Caffe weights: set model.caffe_bgr=true)", key, source, cfg.data.normalize)
        return
    mismatch = convention_mismatch(recorded, run)
    if mismatch is None:
        return
    action, why = mismatch
    if action == "refuse":
        raise CheckpointError(f"{key}={source}: {why}; set data.normalize={recorded['normalize']} (and its "
                              "mean/std) or start from a net trained with this run's convention")
    if warn:
        log.warning("INPUT CONVENTION: %s=%s: %s; the net will see shifted inputs", key, source, why)


def pretrained_convention(cfg: Config, ckpt: Checkpoint, *, warn: bool = True) -> Config:
    """``cfg`` with ``data.normalize``, ``mean`` and ``std`` set to what the fine-tuned file
    (``model.pretrained``) was trained with: the convention it records, else torchvision's (said
    in a warning, when ``warn``)."""
    source = cfg.model.pretrained
    convention = recorded_convention(ckpt, caffe_bgr=cfg.model.caffe_bgr)
    if convention is None:
        convention = TORCHVISION_CONVENTION
        if warn:
            log.warning("model.pretrained=%s records no input convention (a bare state dict): taking torchvision's, "
                        "data.normalize=mean_std with ImageNet's mean %s and std %s on RGB in [0, 1]; for the "
                        "authors' Caffe weights set model.caffe_bgr=true", source, IMAGENET_MEAN, IMAGENET_STD)
    elif warn:
        log.info("model.pretrained=%s: data.normalize=%s, mean %s, std %s, as the file records", source,
                 convention["normalize"], convention["mean"], convention["std"])
    data = dataclasses.replace(cfg.data, normalize=convention["normalize"],
                               mean=list(convention["mean"] or cfg.data.mean),
                               std=list(convention["std"] or cfg.data.std))
    return dataclasses.replace(cfg, data=data)
