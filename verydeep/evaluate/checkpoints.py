"""Nets to evaluate: our checkpoints, exported files or torchvision/Caffe VGG state dicts.

An ``EvalNet`` is a model plus what evaluation needs besides weights: the preprocessing it
was trained with (normalization, training crop, training scale S; a ``DataConfig``), and the
class ids it predicts, with names.

- Our training checkpoints (``RUN_DIR`` = ``RUN_DIR/best.pt``, or a ``.pt`` file) carry the
  resolved config, whose ``data`` section gives the preprocessing, and the class list.
- Files written by ``verydeep export --format safetensors`` carry the same in their header.
- A bare torchvision state dict means torchvision's convention: RGB in [0, 1], ImageNet's
  mean and std (``verydeep.data.config``), resize 256, crop 224, ImageNet's 1000 classes in
  sorted-synset order (names from torchvision's metadata).
- ``caffe_bgr=True``: the authors' Caffe weights: conv1 is flipped to take RGB, and the input
  is 0-255 minus the mean pixel (std 1/255 on our [0, 1] scale).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from verydeep.checkpoint import PREPROCESSING_KEYS, build_model, load, resolve
from verydeep.config import config_from_dict
from verydeep.data import DataConfig
from verydeep.data.config import IMAGENET_MEAN, IMAGENET_STD
from verydeep.errors import CheckpointError
from verydeep.models import VGG

log = logging.getLogger(__name__)

# PREPROCESSING_KEYS (verydeep.checkpoint): the DataConfig fields that describe how a net's
# input was made (the rest say where data lives and how it is loaded, which belongs to the
# dataset being evaluated). A net's stats_file is always None (below), and copying it over the
# dataset's keeps a dataset's statistics from replacing the net's mean and std.
# DataConfig fields naming files and folders. A checkpoint supplies the model, its classes and
# its preprocessing, never these: evaluation reads and writes only where the command line and
# the local defaults say (a stored data.index_cache or val_dir would steer it elsewhere).
LOCATION_KEYS = ("root", "train_dir", "val_dir", "val_labels", "val_synsets", "synset_names", "index_cache",
                 "stats_file")
TORCHVISION = {"normalize": "mean_std", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
               "scale_min": 256, "scale_max": 256, "crop_size": 224}
CAFFE = {"normalize": "mean_std", "mean": [123.68 / 255, 116.779 / 255, 103.939 / 255],
         "std": [1 / 255] * 3, "scale_min": 256, "scale_max": 256, "crop_size": 224}


def data_config(values: dict | None = None, source: str | Path = "checkpoint"):
    """A DataConfig from (a subset of) its fields, without its paths (LOCATION_KEYS); unknown
    keys are dropped with a warning."""
    names = {f.name for f in dataclasses.fields(DataConfig)} - set(LOCATION_KEYS)
    values = dict(values or {})
    if values.get("stats_file"):  # an older run's, never resolved into the values stored beside it
        log.warning("%s names data.stats_file=%s: not read (a checkpoint never chooses files); its stored "
                    "mean and std are used", source, values["stats_file"])
    values = {k: v for k, v in values.items() if k not in LOCATION_KEYS}
    unknown = sorted(set(values) - names)
    if unknown:
        log.warning("ignoring data settings this version does not know: %s", ", ".join(unknown))
    return config_from_dict({"data": {k: v for k, v in values.items() if k in names}}).data


@dataclass
class EvalNet:
    model: VGG
    data: object  # verydeep.data.DataConfig: the net's preprocessing and training scale
    classes: list[str] | None = None  # class ids in output order; None: the dataset's order
    class_names: dict[str, str] = field(default_factory=dict)
    index_names: list[str] | None = None  # names by output index (torchvision's metadata)
    source: str = "model"

    preprocessing_keys = PREPROCESSING_KEYS

    def preprocessing(self) -> dict:
        return {k: getattr(self.data, k) for k in self.preprocessing_keys if hasattr(self.data, k)}

    def preprocessing_key(self) -> str:
        p = self.preprocessing()
        p.pop("scale_min", None), p.pop("scale_max", None)  # train-time S does not change inputs
        return json.dumps(p, sort_keys=True, default=str)

    def label(self, index: int, classes: list[str] | None = None) -> tuple[str, str]:
        """(class id, name) of output ``index`` (``classes``: the dataset's, if the net has none)."""
        ids = self.classes or classes
        cid = ids[index] if ids else str(index)
        name = self.class_names.get(cid) or (self.index_names[index] if self.index_names else "")
        return cid, name


def _torchvision_names(num_classes: int) -> list[str] | None:
    if num_classes != 1000:
        return None
    try:
        from torchvision.models import VGG16_Weights

        return list(VGG16_Weights.IMAGENET1K_V1.meta["categories"])
    except Exception:  # names are a convenience; evaluation does not need them
        return None


def load_eval_net(path: str | Path, *, caffe_bgr: bool = False, ema: bool = False) -> EvalNet:
    """Load a run directory, checkpoint, exported file or foreign VGG state dict (``ema``: a
    training checkpoint's moving average of the weights instead of the weights), checked by
    ``verydeep.checkpoint.load``: damaged files, bad metadata and non-finite weights are refused."""
    file = resolve(path)
    ckpt = load(file)
    model = build_model(ckpt, ema=ema, caffe_bgr=caffe_bgr).eval()
    spec = model.spec
    config = ckpt.config or {}
    if caffe_bgr:
        data, convention = data_config(CAFFE), "caffe"
    elif config.get("data"):
        data, convention = data_config(config["data"], file), "recipe"
    elif ckpt.preprocessing:
        data, convention = data_config(ckpt.preprocessing), "exported"
    else:
        data, convention = data_config(TORCHVISION), "torchvision"
        if ckpt.spec:
            log.warning("%s records no preprocessing; assuming torchvision's (mean/std, 256/224)", file)
    classes = ckpt.classes
    if classes is not None and len(classes) != spec.num_classes:
        raise CheckpointError(f"{file}: lists {len(classes)} classes but the net predicts {spec.num_classes}")
    names = ckpt.class_names
    log.info("loaded %s (net %s%s, %d classes, %s preprocessing)", file, spec.config,
             "-BN" if spec.batch_norm else "", spec.num_classes, convention)
    return EvalNet(model=model, data=data, classes=list(classes) if classes else None,
                   class_names=dict(names), source=str(file),
                   index_names=_torchvision_names(spec.num_classes) if convention in ("torchvision", "caffe") else None)


def as_eval_nets(items, data_cfg=None, *, caffe_bgr: bool = False) -> list[EvalNet]:
    """Normalize one or several VGGs / paths / EvalNets to a list of EvalNets.

    A bare VGG takes its preprocessing from ``data_cfg`` and predicts in the dataset's order.
    """
    if isinstance(items, (str, Path, nn.Module, EvalNet)):
        items = [items]
    nets = []
    for i, item in enumerate(items):
        if isinstance(item, EvalNet):
            nets.append(item)
        elif isinstance(item, (str, Path)):
            nets.append(load_eval_net(item, caffe_bgr=caffe_bgr))
        elif isinstance(item, VGG):
            if data_cfg is None:
                raise ValueError("a bare model needs data_cfg for its preprocessing")
            nets.append(EvalNet(model=item, data=data_cfg, source=f"model{i}"))
        else:
            raise TypeError(f"cannot evaluate a {type(item).__name__}: give a VGG, a checkpoint path or an EvalNet")
    if not nets:
        raise ValueError("no nets to evaluate")
    return nets
