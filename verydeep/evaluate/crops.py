"""The paper's multi-crop evaluation: a regular 5x5 grid of crops per scale, and their flips.

Grid positions (``grid_offsets``): along an axis of length L with crop size C, the n offsets are
``round(i * (L - C) / (n - 1))`` for i = 0..n-1: the first crop touches the top/left border,
the last the bottom/right border, the others are evenly spaced between (ties round to even,
which keeps the grid mirror-symmetric whenever L - C is even). Example: L=320, C=224, n=5 gives
0, 24, 48, 72, 96. The 25 crops are taken row by row (top to bottom, left to right); with
``flip`` the 25 mirrored crops follow in the same order: 50 per image per scale.

When the image is smaller than the crop along an axis (L < C) the offsets become negative
(from 0 down to L - C) and the part of a crop outside the image is zero. Images reach this
module already normalized, so zero is the mean colour: the same zero-padding the paper
describes at crop borders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GRID = 5


def grid_offsets(length: int, crop: int, n: int = GRID) -> list[int]:
    """n crop offsets along one axis: corners and evenly spaced between (may be negative)."""
    if n < 1 or crop < 1 or length < 1:
        raise ValueError(f"grid_offsets needs positive sizes, got length={length}, crop={crop}, n={n}")
    if n == 1:
        return [round((length - crop) / 2)]
    return [round(i * (length - crop) / (n - 1)) for i in range(n)]


def crop_positions(height: int, width: int, crop: int, n: int = GRID) -> list[tuple[int, int]]:
    """(top, left) of the n x n grid, row by row, in image coordinates."""
    return [(t, l) for t in grid_offsets(height, crop, n) for l in grid_offsets(width, crop, n)]


def multicrop_grid(images: torch.Tensor, crop: int, n: int = GRID, flip: bool = True) -> torch.Tensor:
    """All grid crops of a batch of same-size images: [B, n*n*(2 if flip), C, crop, crop].

    Crops are slices of one (zero-padded where needed) tensor, stacked in a single batch so a
    whole image's crops (or several images') go through the net in one forward pass.
    """
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    pad_h, pad_w = max(0, crop - h), max(0, crop - w)
    if pad_h or pad_w:
        images = F.pad(images, (pad_w, pad_w, pad_h, pad_h))
    crops = [images[..., t + pad_h: t + pad_h + crop, l + pad_w: l + pad_w + crop]
             for t, l in crop_positions(h, w, crop, n)]
    out = torch.stack(crops, dim=1)
    if flip:
        out = torch.cat([out, out.flip(-1)], dim=1)
    return out


def center_crop(images: torch.Tensor, crop: int) -> torch.Tensor:
    """The centre crop of a batch [B, C, H, W] (the n=1 grid), zero-padded if the image is smaller."""
    h, w = images.shape[-2:]
    if (h, w) == (crop, crop):
        return images
    return multicrop_grid(images, crop, n=1, flip=False)[:, 0]


def crops_per_image(n: int = GRID, flip: bool = True) -> int:
    return n * n * (2 if flip else 1)
