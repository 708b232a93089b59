"""The paper's test-time protocols, each turning a batch of images into class posteriors.

- ``center``: one crop of the training crop size from the image rescaled to Q (the loader
  crops when Q >= crop, else the image is zero-padded), the classifier form of the net; the
  single-crop validation of training.
- ``dense_scores``: the fully-convolutional net on the whole image rescaled to Q; the class
  score map is spatially averaged (Sec. 3.2).
- ``multicrop``: a 5x5 grid of crops (``verydeep.evaluate.crops``), posteriors averaged.
- ``flip``: each protocol also sees the horizontally mirrored input and averages the two
  softmax posteriors, as the paper does.

Multi-scale averaging (over Q) and the dense + multi-crop combination are averages of these
posteriors per image, done by the evaluator (each Q is its own pass over the data).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from verydeep.evaluate.crops import GRID, center_crop, crops_per_image, multicrop_grid
from verydeep.models import VGG, fully_convolutional

PROTOCOLS = ("center", "dense", "multicrop", "dense+multicrop")
# What each protocol needs per scale: the loader crop ('crop': centre crop of the training
# size, 'full': the whole rescaled image) and the posteriors it averages.
KINDS = {"center": ("center",), "dense": ("dense",), "multicrop": ("multicrop",),
         "dense+multicrop": ("dense", "multicrop")}
# Paper Sec. 3.2: "the class score map is spatially averaged (sum-pooled) to obtain a
# fixed-size vector of class scores", then softmax. Averaging per-location posteriors is the
# alternative ("posteriors").
DENSE_AVERAGE = "scores"


def check_protocol(protocol: str) -> str:
    if protocol not in KINDS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return protocol


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _run(net, x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_for(x.device):
        return net(x).float()


def _with_flip(x: torch.Tensor, flip: bool) -> torch.Tensor:
    return torch.cat([x, x.flip(-1)]) if flip else x


def _average_flip(p: torch.Tensor, batch: int, flip: bool) -> torch.Tensor:
    return (p[:batch] + p[batch:]) / 2 if flip else p


@torch.no_grad()
def center(model: VGG, images: torch.Tensor, *, crop: int | None = None, flip: bool = True) -> torch.Tensor:
    """Posteriors [B, K] of the classifier on the centre ``crop`` of the images, flip-averaged.

    Images already cropped by the loader pass through; larger ones are centre-cropped here,
    smaller ones zero-padded (a test scale Q below the crop size).
    """
    b = images.shape[0]
    if crop is not None:
        images = center_crop(images, crop)
    probs = _run(model, _with_flip(images, flip)).softmax(dim=1)
    return _average_flip(probs, b, flip)


def min_dense_size(model: VGG) -> int:
    """Smallest input side the dense form accepts: the FC1 kernel must fit the feature map."""
    return 32 * model.spec.head_size


@torch.no_grad()
def dense_scores(model: VGG, images: torch.Tensor, *, flip: bool = True,
                 average: str = DENSE_AVERAGE) -> torch.Tensor:
    """Dense evaluation: posteriors [B, K] of whole images of any (shared) size.

    ``average="scores"`` (default, the paper's wording): spatially average the class score
    map, then softmax. ``average="posteriors"``: softmax at every location, then average.
    An image smaller than the net's minimum (32 * head_size, 224 for the full net) is
    zero-padded symmetrically up to it, the dense analogue of a padded crop.
    """
    if average not in ("scores", "posteriors"):
        raise ValueError(f"dense average must be 'scores' or 'posteriors', got {average!r}")
    b = images.shape[0]
    m = min_dense_size(model)
    h, w = images.shape[-2:]
    if h < m or w < m:
        ph, pw = max(0, m - h), max(0, m - w)
        images = F.pad(images, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    score_map = _run(fully_convolutional(model), _with_flip(images, flip))  # [B', K, H', W']
    if average == "scores":
        probs = score_map.mean(dim=(2, 3)).softmax(dim=1)
    else:
        probs = score_map.softmax(dim=1).mean(dim=(2, 3))
    return _average_flip(probs, b, flip)


@torch.no_grad()
def multicrop(model: VGG, images: torch.Tensor, crop: int, *, flip: bool = True, grid: int = GRID,
              max_batch: int | None = None) -> torch.Tensor:
    """Multi-crop evaluation: mean posterior [B, K] over the grid x flip crops of each image.

    The crops of several images are concatenated and run ``max_batch`` at a time (default:
    all crops of the batch in one forward pass).
    """
    b = images.shape[0]
    per = crops_per_image(grid, flip)
    crops = multicrop_grid(images, crop, grid, flip).flatten(0, 1)  # [B * per, C, crop, crop]
    step = max_batch or crops.shape[0]
    probs = torch.cat([_run(model, crops[i: i + step]).softmax(dim=1)
                       for i in range(0, crops.shape[0], step)])
    return probs.view(b, per, -1).mean(dim=1)


def posteriors(kind: str, model: VGG, images: torch.Tensor, *, crop: int, flip: bool = True,
               dense_average: str = DENSE_AVERAGE, max_batch: int | None = None) -> torch.Tensor:
    """One protocol's posteriors for a batch (``kind``: center, dense or multicrop)."""
    if kind == "center":
        return center(model, images, crop=crop, flip=flip)
    if kind == "dense":
        return dense_scores(model, images, flip=flip, average=dense_average)
    if kind == "multicrop":
        return multicrop(model, images, crop, flip=flip, max_batch=max_batch)
    raise ValueError(f"unknown evaluation kind {kind!r}; choose center, dense or multicrop")
