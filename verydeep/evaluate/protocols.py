"""The paper's test-time protocols, and the methods that turn a batch of images into posteriors.

Words used throughout ``verydeep.evaluate``:

- a *method* makes class posteriors from images rescaled to one test scale Q:
  - ``center``: one crop of the training crop size (the loader crops when Q >= crop, else the
    image is zero-padded), the classifier form of the net; the single-crop validation of
    training.
  - ``dense``: the fully-convolutional net on the whole image; the class score map is
    spatially averaged (Sec. 3.2).
  - ``multicrop``: a 5x5 grid of crops (``verydeep.evaluate.crops``), posteriors averaged.

  With ``flip`` each method also sees the horizontally mirrored input and averages the two
  softmax posteriors, as the paper does.
- a *pass* is one method at one Q: one read of the data (the evaluator's unit of work).
- a *protocol* is what a row of the paper's tables reports: ``center``, ``dense``,
  ``multicrop`` or ``dense+multicrop`` (Table 5's "multi-crop & dense"), each at a set of
  test scales. Its posterior is the average over its methods and scales
  (``verydeep.evaluate.fusion``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from verydeep.evaluate.crops import GRID, center_crop, crops_per_image, multicrop_grid
from verydeep.evaluate.fusion import average_posteriors
from verydeep.models import VGG, fully_convolutional
from verydeep.runtime import Runtime, build_runtime

METHODS = ("center", "dense", "multicrop")
PROTOCOLS = ("center", "dense", "multicrop", "dense+multicrop")
PROTOCOL_METHODS = {"center": ("center",), "dense": ("dense",), "multicrop": ("multicrop",),
                    "dense+multicrop": ("dense", "multicrop")}
# Paper Sec. 3.2: "the class score map is spatially averaged (sum-pooled) to obtain a
# fixed-size vector of class scores", then softmax. Averaging per-location posteriors is the
# alternative ("posteriors").
DENSE_AVERAGE = "scores"
# Multi-crop on a CPU: at most this many crop pixels (crops x crop^2) per forward pass. One
# pass over a whole batch's crops (200 crops of 64 px for 4 images) ran at 0.6-0.9x the
# reference, which passes one image's 50 crops at a time: the activations outgrow the CPU's
# caches. 2^19 pixels (128 crops of 64 px, 512 of 32 px, 10 of 224 px) measured fastest for
# the demo's and the mini profile's nets (BENCHMARKS.md, "Evaluation on CPU").
CPU_CROP_PIXELS = 2 ** 19


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOL_METHODS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return protocol


def methods_of(protocol: str) -> tuple[str, ...]:
    """The methods whose posteriors a protocol averages (per test scale)."""
    return PROTOCOL_METHODS[check_protocol(protocol)]


def input_crop(method: str, scale: int, crop_size: int) -> int | None:
    """The crop to make when reading an image at test scale ``scale`` for ``method``.

    ``center`` lets the reader take the centre crop, as training's validation does, which
    needs Q >= crop; below that, and for the other methods, the whole rescaled image is read
    and the method crops or pads it itself.
    """
    return crop_size if method == "center" and scale >= crop_size else None


def _forward(model, x: torch.Tensor, runtime: Runtime | None) -> torch.Tensor:
    # Callers without a runtime (benchmarks, single calls) get the process default for the
    # input's device: the same policy ``build_runtime`` applies everywhere else.
    runtime = runtime or build_runtime(x.device)
    with runtime.autocast():
        return model(runtime.prepare_input(x)).float()


def _with_flip(x: torch.Tensor, flip: bool) -> torch.Tensor:
    return torch.cat([x, x.flip(-1)]) if flip else x


def _average_flip(p: torch.Tensor, batch: int, flip: bool) -> torch.Tensor:
    return average_posteriors([p[:batch], p[batch:]]) if flip else p


@torch.no_grad()
def center(model: VGG, images: torch.Tensor, *, crop: int | None = None, flip: bool = True,
           runtime: Runtime | None = None) -> torch.Tensor:
    """Posteriors [B, K] of the classifier on the centre ``crop`` of the images, flip-averaged.

    Images already cropped by the loader pass through; larger ones are centre-cropped here,
    smaller ones zero-padded (a test scale Q below the crop size).
    """
    b = images.shape[0]
    if crop is not None:
        images = center_crop(images, crop)
    probs = _forward(model, _with_flip(images, flip), runtime).softmax(dim=1)
    return _average_flip(probs, b, flip)


def min_dense_size(model: VGG) -> int:
    """Smallest input side the dense form accepts: the FC1 kernel must fit the feature map."""
    return 32 * model.spec.head_size


@torch.no_grad()
def dense_scores(model: VGG, images: torch.Tensor, *, flip: bool = True, average: str = DENSE_AVERAGE,
                 runtime: Runtime | None = None, pooling: str = "floor") -> torch.Tensor:
    """Dense evaluation: posteriors [B, K] of whole images of any (shared) size.

    ``average="scores"`` (default, the paper's wording): spatially average the class score
    map, then softmax. ``average="posteriors"``: softmax at every location, then average.
    An image smaller than the net's minimum (32 * head_size, 224 for the full net) is
    zero-padded symmetrically up to it, the dense analogue of a padded crop. ``pooling``:
    the max-pools' rounding, ``floor`` (PyTorch) or ``ceil`` (Caffe; ``fully_convolutional``).
    """
    if average not in ("scores", "posteriors"):
        raise ValueError(f"dense average must be 'scores' or 'posteriors', got {average!r}")
    b = images.shape[0]
    m = min_dense_size(model)
    h, w = images.shape[-2:]
    if h < m or w < m:
        ph, pw = max(0, m - h), max(0, m - w)
        images = F.pad(images, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    score_map = _forward(fully_convolutional(model, pooling), _with_flip(images, flip), runtime)  # [B', K, H', W']
    if average == "scores":
        probs = score_map.mean(dim=(2, 3)).softmax(dim=1)
    else:
        probs = score_map.softmax(dim=1).mean(dim=(2, 3))
    return _average_flip(probs, b, flip)


@torch.no_grad()
def multicrop(model: VGG, images: torch.Tensor, crop: int, *, flip: bool = True, grid: int = GRID,
              crop_batch: int | None = None, runtime: Runtime | None = None) -> torch.Tensor:
    """Multi-crop evaluation: mean posterior [B, K] over the grid x flip crops of each image.

    The crops of several images are concatenated and run at most ``crop_batch`` at a time
    (default: all crops of the batch in one forward pass; see :func:`crops_per_pass`).
    """
    b = images.shape[0]
    per = crops_per_image(grid, flip)
    crops = multicrop_grid(images, crop, grid, flip).flatten(0, 1)  # [B * per, C, crop, crop]
    step = crops_per_pass(crops.shape[0], crop, images.device, crop_batch)
    probs = torch.cat([_forward(model, crops[i: i + step], runtime).softmax(dim=1)
                       for i in range(0, crops.shape[0], step)])
    return probs.view(b, per, -1).mean(dim=1)


def crops_per_pass(n: int, crop: int, device: torch.device, crop_batch: int | None = None) -> int:
    """Crops per forward pass for ``n`` crops of ``crop`` px: ``crop_batch`` (default all
    ``n``), and on a CPU no more than :data:`CPU_CROP_PIXELS` worth."""
    step = min(n, crop_batch or n)
    if torch.device(device).type == "cpu":
        step = min(step, max(1, CPU_CROP_PIXELS // (crop * crop)))
    return max(1, step)


def posteriors(method: str, model: VGG, images: torch.Tensor, *, crop: int, flip: bool = True,
               dense_average: str = DENSE_AVERAGE, crop_batch: int | None = None,
               runtime: Runtime | None = None, dense_pooling: str = "floor") -> torch.Tensor:
    """One method's posteriors [B, K] for a batch of images at one test scale."""
    if method == "center":
        return center(model, images, crop=crop, flip=flip, runtime=runtime)
    if method == "dense":
        return dense_scores(model, images, flip=flip, average=dense_average, runtime=runtime, pooling=dense_pooling)
    if method == "multicrop":
        return multicrop(model, images, crop, flip=flip, crop_batch=crop_batch, runtime=runtime)
    raise ValueError(f"unknown evaluation method {method!r}; choose from {', '.join(METHODS)}")
