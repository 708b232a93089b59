"""ImageNet data pipeline: layouts, decoding, the paper's transforms, loaders, demo data."""

from verydeep.data.config import DataConfig
from verydeep.data.decode import load_image
from verydeep.data.demo import DEMO_CLASSES, make_demo_dataset
from verydeep.data.errors import BadImageError, DataError
from verydeep.data.layouts import Splits, discover
from verydeep.data.loaders import build_eval_loader, build_train_loader, epoch_permutation, sample_rng
from verydeep.data.transforms import eval_transform, normalization

__all__ = [
    "BadImageError", "DEMO_CLASSES", "DataConfig", "DataError", "Splits", "build_eval_loader",
    "build_train_loader", "discover", "epoch_permutation", "eval_transform", "load_image",
    "make_demo_dataset", "normalization", "sample_rng",
]
