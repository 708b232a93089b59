"""The reference the benchmarks compare with: the standard PyTorch recipe a user would write.

- Model: torchvision's VGG class (``torchvision.models.vgg16`` at full width); at a reduced
  width the same class over ``make_layers`` of the narrowed configuration, with a classifier
  of the same narrowed sizes as ours, so both sides do the same arithmetic.
- Loop: a plain AMP training step in the style of pytorch/examples' ImageNet script:
  NCHW tensors, ``cudnn.benchmark`` on (as that script and torchvision's reference script set
  it), ``torch.optim.SGD`` with its defaults, the loss read back with ``.item()`` every step
  for the running average.
- The stronger reference (``timm=True``), as timm users run it: the same model and optimiser
  in channels_last with bf16 autocast and ``cudnn.benchmark``, the loss read back only every
  ``TIMM_LOG_INTERVAL`` steps (its log interval; the benefit of the doubt).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from verydeep.models.registry import resolve

# torchvision builds A, B, D, E; C (1x1 convs) and A-LRN are ours alone.
TORCHVISION_CONFIGS = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}


def reference_model(name: str = "vgg16", *, num_classes: int = 1000, width: float = 1.0,
                    head_size: int = 7, fc_features: int | None = None, dropout: float = 0.5,
                    batch_norm: bool | None = None) -> nn.Module:
    from torchvision.models import vgg as tv

    config, bn = resolve(name)
    bn = bn if batch_norm is None else batch_norm
    if config not in TORCHVISION_CONFIGS:
        raise ValueError(f"torchvision has no VGG configuration {config!r} to compare with; "
                         f"use one of {', '.join(TORCHVISION_CONFIGS.values())}")
    hidden = fc_features if fc_features is not None else max(1, int(round(4096 * width)))
    if width == 1.0 and head_size == 7 and hidden == 4096:
        builder = getattr(tv, TORCHVISION_CONFIGS[config] + ("_bn" if bn else ""))
        return builder(weights=None, num_classes=num_classes, dropout=dropout)
    cfg = [v if v == "M" else max(1, int(round(v * width))) for v in tv.cfgs[config]]
    model = tv.VGG(tv.make_layers(cfg, batch_norm=bn), num_classes=num_classes, init_weights=True,
                   dropout=dropout)
    channels = cfg[-2]
    model.avgpool = nn.AdaptiveAvgPool2d((head_size, head_size))
    model.classifier = nn.Sequential(
        nn.Linear(channels * head_size * head_size, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
        nn.Linear(hidden, num_classes),
    )
    return model


def reference_optimizer(model: nn.Module, lr: float = 0.01) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


TIMM_LOG_INTERVAL = 50


class ReferenceStep:
    """One training step of the plain loop; ``loss_sum`` is the running sum it logs."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, amp_dtype: torch.dtype | None,
                 device: torch.device, *, timm: bool = False) -> None:
        self.model, self.optimizer, self.amp_dtype, self.device = model, optimizer, amp_dtype, device
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
        self.channels_last = timm
        if timm:
            model.to(memory_format=torch.channels_last)
        self.read_every = TIMM_LOG_INTERVAL if timm else 1
        self.loss_sum, self.steps = 0.0, 0
        self.losses: list[torch.Tensor] = []  # the benchmark's own record, read after timing

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = F.cross_entropy(self.model(images), labels)
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.steps += 1
        self.losses.append(loss.detach())
        if self.steps % self.read_every == 0:
            self.loss_sum += loss.item()
