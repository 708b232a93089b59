"""Tiny nets and batches shared by the multi-process parallel tests (fp64: exact comparisons)."""

from __future__ import annotations

import torch

from verydeep.models import create_model
from verydeep.train.loss import classification_loss

CROP = 32
CLASSES = 10
LOSS = classification_loss()  # the training step's criterion, handed to forward_backward


def tiny_model(seed: int = 0, config: str = "A"):
    torch.manual_seed(seed)
    return create_model(config, num_classes=CLASSES, width=1 / 16, head_size=1, dropout=0.0).double()


def batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    return (torch.randn(n, 3, CROP, CROP, generator=g, dtype=torch.float64),
            torch.randint(0, CLASSES, (n,), generator=g))


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


def assert_close(a, b, what: str, tol: float = 1e-9) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")
