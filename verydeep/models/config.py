"""Model section of a run configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass

# The one place the default init scheme is named (create_model and recipes share it).
DEFAULT_INIT = "kaiming"
# Dense evaluation's max-pool rounding: floor (PyTorch's) or ceil (Caffe's, where the paper's dense
# numbers were made); defined here, without torch, so the command line can offer it at once.
DENSE_POOLING = ("floor", "ceil")
# model.width's ceiling: 4x the paper's channels is already 16x its parameters (VGG-16's FC1 alone
# 1.6 G); a wider net would fail in the allocator, with a traceback, not at the config.
MAX_WIDTH = 4.0


@dataclass
class ModelConfig:
    name: str = "vgg16"  # registry name or paper letter
    batch_norm: bool | None = None  # None: from the name (*_bn)
    num_classes: int | None = None  # None: number of classes in the training set
    width: float = 1.0  # channel multiplier (tiny nets for tests and the demo)
    head_size: int | None = None  # spatial size FC1 sees; None: data.crop_size // 32
    fc_features: int | None = None  # hidden FC width; None: round(4096 * width)
    dropout: float = 0.5
    init: str = DEFAULT_INIT  # gaussian | glorot | xavier | kaiming
    init_std: float = 0.01  # std of the gaussian scheme
    # Paper Sec. 3.1: start a deeper net from a trained shallower one (first four convs and
    # the three FC layers; see verydeep.models.init.shallower_mapping).
    init_from: str | None = None
    init_from_convs: int = 4  # -1: every conv that has a counterpart
    # Start from a full set of weights (e.g. S=384 from the S=256 net, or torchvision's).
    weights: str | None = None
    # Fine-tune pretrained weights (`verydeep train --pretrained FILE`; verydeep.train.pretrained):
    # a torchvision state dict, a .safetensors export, a verydeep checkpoint or run folder holding
    # the configured net. Every tensor is copied; the last FC layer is new when the file's classes
    # are not the dataset's. The run's data normalisation becomes the file's input convention.
    pretrained: str | None = None
    caffe_bgr: bool = False  # the weights expect BGR input (Caffe): flip conv1's channels
    # Fine-tune the FC layers only (the paper's last ILSVRC ensemble member, Sec. 4.5): the conv
    # layers (and their batch norm) keep their weights, out of the optimiser, requires_grad off.
    freeze_convs: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and 0 < self.width <= MAX_WIDTH):
            raise ValueError(f"width must be a number in (0, {MAX_WIDTH:g}], got {self.width}")
        given = [key for key in ("init_from", "weights", "pretrained") if getattr(self, key)]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} are exclusive: a run starts from one set of weights")
