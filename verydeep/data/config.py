"""Data section of a run configuration: where the images are, how they are transformed, how
they are loaded. The one place these defaults live."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

# Krizhevsky et al. 2012 colour PCA of ImageNet training pixels in [0, 1] (the values
# fb.resnet.torch and most ports use). Columns of the eigenvector matrix are the principal
# directions; row c is the R, G or B component.
IMAGENET_PCA_EIGVAL = [0.2175, 0.0188, 0.0045]
IMAGENET_PCA_EIGVEC = [
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

TRAIN_TRANSFORMS = ("scale_jitter", "random_resized_crop")
AUTO_AUGMENTS = ("randaugment", "trivialaugment")
NORMALIZATIONS = ("caffe", "mean_rgb", "mean_std")
DECODERS = ("cpu", "gpu")  # data.decode
TRAINING_SET_STATS = "train"  # data.stats_file value: the training set's own statistics, computed once
# Largest image side a crop, a training scale S or a test scale Q may have: 8x the paper's
# largest Q (512). A 4096 x 4096 input already needs 4 GiB for the first conv layer's output
# alone (64 channels, float32, one image); beyond it a typo (a crop of 100000) would only
# reach an allocation failure, so it is refused as a value instead.
MAX_IMAGE_SIDE = 4096


def check_image_side(value, name: str) -> int:
    """``value`` when it is an integer in [1, MAX_IMAGE_SIDE]; ValueError naming ``name``."""
    try:
        side = operator.index(value)  # an int (numpy's included), never a float or a bool
    except TypeError:
        side = None
    if side is None or isinstance(value, bool) or not 1 <= side <= MAX_IMAGE_SIDE:
        raise ValueError(f"{name}={value!r} must be an integer from 1 to {MAX_IMAGE_SIDE} (pixels; "
                         f"8x the paper's largest test scale)")
    return side


@dataclass
class DataConfig:
    # --- where the data lives -------------------------------------------------------------
    root: str | None = None  # folder with train/ and val/ (or Kaggle's ILSVRC/Data/CLS-LOC/)
    train_dir: str | None = None  # explicit train folder (class sub-folders); default root/train
    val_dir: str | None = None  # explicit val folder; default root/val
    # Ground truth of a flat val folder: Kaggle LOC_val_solution.csv or the devkit's
    # ILSVRC2012_validation_ground_truth.txt. None: looked for next to val/ and in root.
    val_labels: str | None = None
    # Devkit ILSVRC id -> wnid mapping ("<id> <wnid>" per line, or one wnid per line in id
    # order). None: looked for next to the ground truth.
    val_synsets: str | None = None
    # wnid -> human name ("<wnid> <name>" per line, LOC_synset_mapping.txt). None: looked for.
    synset_names: str | None = None
    index_cache: str | None = None  # folder for the cached file index; None: ~/.cache/verydeep
    # Model selection on held-out training images (verydeep.data.holdout): this many training
    # images of each class (an integer >= 1), or this fraction of each class (a number in (0, 1)),
    # are left out of training and validate the run (best.pt, the plateau rule) in place of the
    # validation set; evaluations still score the validation set. 0: validate on the validation set.
    holdout: int | float = 0
    holdout_seed: int = 0  # which images are held out (with the class id; the same on every rank)

    # --- training transform (paper Sec. 3.1) ----------------------------------------------
    train_transform: str = "scale_jitter"  # scale_jitter | random_resized_crop
    # Training scale S: the shorter side after isotropic rescaling. scale_min == scale_max is
    # single-scale training (S=256 or 384); scale_min < scale_max draws S uniformly per image.
    scale_min: int = 256
    scale_max: int = 256
    crop_size: int = 224
    flip: bool = True
    colour_shift: float = 0.1  # std of the PCA colour-shift alphas; 0 disables it
    pca_eigval: list[float] = field(default_factory=lambda: list(IMAGENET_PCA_EIGVAL))
    pca_eigvec: list[list[float]] = field(default_factory=lambda: [list(r) for r in IMAGENET_PCA_EIGVEC])
    # caffe: pixels in 0..255 minus the mean RGB, no std division, colour shift in the same
    # units: the paper's convention (Caffe, and the released models). mean_rgb: the same in
    # [0, 1], 255x smaller signal. mean_std: (x - mean) / std in [0, 1] (torchvision's
    # convention, and torchvision's weights). mean/std/PCA below are always in [0, 1] units.
    normalize: str = "mean_rgb"
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    # JSON written by `verydeep data stats`; when set, its mean, std and PCA replace the above.
    # "train": the training set's own, computed at the start of training by the same code and
    # cached; the run's saved config (and its checkpoints) then hold the values themselves.
    stats_file: str | None = None
    rrc_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # random_resized_crop area
    rrc_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # and aspect range

    # --- modern augmentations (verydeep.data.augment: torchvision.transforms.v2; not the paper's) --
    auto_augment: str | None = None  # randaugment | trivialaugment (TrivialAugmentWide); None: off
    randaugment_ops: int = 2  # RandAugment's N
    randaugment_magnitude: int = 9  # RandAugment's M (of 31 bins)
    random_erasing: float = 0.0  # probability of erasing a rectangle of each crop (reference: 0.25)
    # MixUp / CutMix on every batch (soft labels); both > 0: one of the two per batch, drawn.
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing weight; 0: off (reference: 0.2)
    cutmix_alpha: float = 0.0  # 0: off (reference: 1.0)

    # --- evaluation transform ---------------------------------------------------------------
    eval_scale: int = 256  # test scale Q (shorter side)
    eval_crop: int = 224  # centre crop for single-crop validation

    # --- loading -----------------------------------------------------------------------------
    # loader worker processes per training process; 0: in-process; None: the cores available to
    # each training process, less one for the process itself (verydeep.data.loaders.loader_workers)
    workers: int | None = None
    prefetch_factor: int = 2  # batches each worker keeps ready
    pin_memory: bool = True  # page-locked batches when training on CUDA
    persistent_workers: bool = True  # keep workers alive across epochs
    max_bad_retries: int = 10  # replacement draws for an unreadable training image
    draft: bool = True  # let the JPEG decoder downscale by 2/4/8 when the target scale allows
    # Where training JPEGs are decoded: cpu (Pillow, in the loader workers) or gpu (nvJPEG in
    # the training process, workers read bytes and draw the crops: verydeep.data.gpu_decode).
    # gpu falls back to cpu, saying why, where torchvision cannot decode on the device.
    decode: str = "cpu"

    def __post_init__(self) -> None:
        if self.train_transform not in TRAIN_TRANSFORMS:
            raise ValueError(f"train_transform={self.train_transform!r}; expected one of {', '.join(TRAIN_TRANSFORMS)}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize={self.normalize!r}; expected one of {', '.join(NORMALIZATIONS)}")
        for name in ("crop_size", "eval_crop", "eval_scale", "scale_min", "scale_max"):
            check_image_side(getattr(self, name), name)
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min={self.scale_min} is larger than scale_max={self.scale_max}")
        if self.train_transform == "scale_jitter" and self.scale_min < self.crop_size:
            raise ValueError(f"scale_min={self.scale_min} is smaller than crop_size={self.crop_size}: "
                             "a crop must fit inside the rescaled image")
        if self.colour_shift < 0:
            raise ValueError(f"colour_shift={self.colour_shift} must be >= 0")
        for name in ("mean", "std", "pca_eigval"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} must have 3 values (R, G, B), got {getattr(self, name)!r}")
        if len(self.pca_eigvec) != 3 or any(len(r) != 3 for r in self.pca_eigvec):
            raise ValueError("pca_eigvec must be a 3x3 matrix (rows R, G, B; columns eigenvectors)")
        for name in ("mean", "std", "pca_eigval", "pca_eigvec"):
            values = getattr(self, name)
            if not all(math.isfinite(v) for v in (sum(values, []) if name == "pca_eigvec" else values)):
                raise ValueError(f"{name} must be finite numbers, got {values!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std!r}")
        if len(self.rrc_scale) != 2 or not 0 < self.rrc_scale[0] <= self.rrc_scale[1] <= 1:
            raise ValueError(f"rrc_scale must be [min, max] within (0, 1], got {self.rrc_scale!r}")
        if len(self.rrc_ratio) != 2 or not 0 < self.rrc_ratio[0] <= self.rrc_ratio[1]:
            raise ValueError(f"rrc_ratio must be [min, max] > 0, got {self.rrc_ratio!r}")
        if self.auto_augment is not None and self.auto_augment not in AUTO_AUGMENTS:
            raise ValueError(f"auto_augment={self.auto_augment!r}; expected one of {', '.join(AUTO_AUGMENTS)} or null")
        if not 0 <= self.random_erasing <= 1:
            raise ValueError(f"random_erasing={self.random_erasing} must be a probability in [0, 1]")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0 (0: off)")
        if self.randaugment_ops < 1 or not 0 <= self.randaugment_magnitude <= 30:
            raise ValueError("randaugment_ops must be >= 1 and randaugment_magnitude in [0, 30]")
        if self.decode not in DECODERS:
            raise ValueError(f"decode={self.decode!r}; expected one of {', '.join(DECODERS)}")
        if self.holdout < 0 or (self.holdout >= 1 and self.holdout != int(self.holdout)):
            raise ValueError(f"holdout={self.holdout!r} must be 0 (off), a fraction in (0, 1) or a whole number of "
                             "images per class")
        if (self.workers is not None and self.workers < 0) or self.prefetch_factor < 1 or self.max_bad_retries < 0:
            raise ValueError("workers and max_bad_retries must be >= 0 and prefetch_factor >= 1")
