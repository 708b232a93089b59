"""The modern augmentations timm and torchvision's reference scripts use, from
``torchvision.transforms.v2`` (nothing re-implemented here); all off by default and in the
paper's recipes (``verydeep.data.config``: ``auto_augment``, ``random_erasing``,
``mixup_alpha``, ``cutmix_alpha``).

Where they act, relative to the paper's transform (Sec. 3.1):

- per image, in the loader's workers, on the uint8 crop after rescaling, cropping and
  flipping, before the colour shift and normalization: RandAugment or TrivialAugmentWide
  (:class:`ImageAugment`), then RandomErasing. The erased rectangle takes the mean colour,
  which normalization maps to 0: what torchvision's reference does by erasing after its
  Normalize.
- per batch, after normalization: MixUp or CutMix (one of the two, drawn per batch, when both
  are on), which turn the int64 labels [B] into class probabilities [B, K]
  (:class:`BatchMix`). ``F.cross_entropy`` takes those as its target, in every parallel mode.

Reproducibility: v2 transforms draw from torch's global generator. Each call here runs under
``torch.random.fork_rng`` seeded from the loader's own per-sample (per-batch) seeds, so an
augmented batch depends only on (seed, epoch, sample or batch), like the rest of the
pipeline: a resumed run sees the batches the uninterrupted one saw.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from verydeep.data.config import DataConfig

# per-batch seeds: kept apart from the per-sample streams, which use (seed, epoch, index)
_BATCH_MIX_TAG = 0x4D495858


def image_augment_enabled(cfg: DataConfig) -> bool:
    return cfg.auto_augment is not None or cfg.random_erasing > 0


def batch_mix_enabled(cfg: DataConfig) -> bool:
    return cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0


class ImageAugment:
    """RandAugment / TrivialAugmentWide, then RandomErasing, on one uint8 HWC crop."""

    def __init__(self, cfg: DataConfig) -> None:
        steps = []
        if cfg.auto_augment == "randaugment":
            steps.append(v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude))
        elif cfg.auto_augment == "trivialaugment":
            steps.append(v2.TrivialAugmentWide())
        if cfg.random_erasing > 0:
            fill = [int(round(255 * m)) for m in cfg.mean]  # 0 once normalized
            steps.append(v2.RandomErasing(p=cfg.random_erasing, value=fill))
        self.transform = v2.Compose(steps)

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        """``image`` uint8 [H, W, 3]; ``seed`` fixes every random choice."""
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a copy: the decoded crop may be read-only
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = self.transform(x)
        return x.permute(1, 2, 0).numpy()


class BatchMix:
    """MixUp or CutMix on a normalized batch: ``(images, labels [B]) -> (images, probabilities [B, K])``."""

    def __init__(self, cfg: DataConfig, num_classes: int) -> None:
        choices = []
        if cfg.mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
        if cfg.cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
        if not choices:
            raise ValueError("BatchMix needs data.mixup_alpha > 0 or data.cutmix_alpha > 0")
        self.transform = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, *, seed: int, epoch: int, batch: int,
                 rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        # The draws (lambda, box, which of the two) are a function of (seed, epoch, batch, rank).
        draw = np.random.default_rng([seed, epoch, batch, rank, _BATCH_MIX_TAG]).integers(2**62)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(draw))
            return self.transform(images, labels)
