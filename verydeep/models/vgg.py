"""The VGG network: ``features`` (convs and pools), ``avgpool`` and ``classifier`` (FC layers).

Module names and ``nn.Sequential`` indices are the same as torchvision's VGG, so state dicts
move between the two unchanged (``features.N.*``, ``classifier.{0,3,6}.*``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from verydeep.models.configurations import (
    CONFIGURATIONS,
    FC_FEATURES,
    HEAD_SIZE,
    LRN_PARAMS,
)
from verydeep.models.lrn import KrizhevskyLRN


@dataclass(frozen=True)
class VGGSpec:
    """Everything needed to rebuild a network; stored with every checkpoint."""

    config: str = "D"
    batch_norm: bool = False
    num_classes: int = 1000
    width: float = 1.0
    fc_features: int | None = None  # None: round(4096 * width)
    head_size: int = HEAD_SIZE  # spatial size FC1 sees (input_size / 32)
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.config not in CONFIGURATIONS:
            raise ValueError(
                f"unknown VGG configuration {self.config!r}; known: {sorted(CONFIGURATIONS)}"
            )
        for key in ("num_classes", "head_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def channels(self, c: int) -> int:
        return max(1, int(round(c * self.width)))

    @property
    def hidden(self) -> int:
        return self.fc_features if self.fc_features is not None else self.channels(FC_FEATURES)

    @property
    def feature_channels(self) -> int:
        return self.channels(512)

    def to_dict(self) -> dict:
        return asdict(self)


def make_features(spec: VGGSpec) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in CONFIGURATIONS[spec.config]:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif item == "LRN":
            layers.append(KrizhevskyLRN(**LRN_PARAMS))
        else:
            kernel, out = item if isinstance(item, tuple) else (3, item)
            out = spec.channels(out)
            layers.append(nn.Conv2d(in_ch, out, kernel_size=kernel, padding=kernel // 2))
            if spec.batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            in_ch = out
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, spec: VGGSpec) -> None:
        super().__init__()
        self.spec = spec
        self.features = make_features(spec)
        # Identity at the training resolution; lets the classifier form accept other sizes
        # (torchvision's behaviour). Dense evaluation bypasses it.
        self.avgpool = nn.AdaptiveAvgPool2d((spec.head_size, spec.head_size))
        self.classifier = self._make_classifier(spec.num_classes)

    def _make_classifier(self, num_classes: int) -> nn.Sequential:
        s = self.spec
        flat = s.feature_channels * s.head_size * s.head_size
        return nn.Sequential(
            nn.Linear(flat, s.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=s.dropout),
            nn.Linear(s.hidden, s.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=s.dropout),
            nn.Linear(s.hidden, num_classes),
        )

    @property
    def fc_layers(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        return self.classifier[0], self.classifier[3], self.classifier[6]

    def conv_layers(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last FC layer (fine-tuning on another label set)."""
        last = self.classifier[6]
        new = nn.Linear(last.in_features, num_classes).to(last.weight.device, last.weight.dtype)
        nn.init.normal_(new.weight, 0.0, 0.01)
        nn.init.zeros_(new.bias)
        self.classifier[6] = new
        self.spec = VGGSpec(**{**self.spec.to_dict(), "num_classes": num_classes})

    def extra_repr(self) -> str:
        s = self.spec
        return f"config={s.config}, batch_norm={s.batch_norm}, width={s.width}, classes={s.num_classes}"
