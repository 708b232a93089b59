"""Top-k error (the paper's top-1 / top-5 error) and per-class accuracy, from class
posteriors (or scores) and labels. Shared by validation during training and by evaluation.

Errors are in percent, as in the paper's tables. An image that could not be decoded has no
posterior; it counts as wrong at every k (it stays in the denominator).
"""

from __future__ import annotations

import torch


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> torch.Tensor:
    """[N, len(ks)] bool: is the true label among the k highest-scoring classes?

    k larger than the number of classes is clipped to it (top-5 of a 3-class problem is
    always right). Ties are broken by ``torch.topk``'s order.
    """
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"expected scores [N, K] and labels [N], got {tuple(scores.shape)} and {tuple(labels.shape)}")
    k_max = min(max(ks), scores.shape[1])
    top = scores.topk(k_max, dim=1).indices
    hits = top.eq(labels[:, None].to(top.device))
    return torch.stack([hits[:, : min(k, k_max)].any(dim=1) for k in ks], dim=1)


def topk_error(scores: torch.Tensor, labels: torch.Tensor, k: int = 1, *, missing: int = 0) -> float:
    """Top-k error in percent; ``missing`` images (undecodable) count as errors."""
    n = scores.shape[0] + missing
    if n == 0:
        raise ValueError("top-k error of an empty set")
    correct = topk_hits(scores, labels, (k,))[:, 0].sum().item() if scores.shape[0] else 0
    return 100.0 * (1.0 - correct / n)


def per_class_accuracy(correct: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(accuracy [K] in [0, 1], NaN for classes with no image; image count [K]).

    ``correct`` is a per-image 0/1 vector (an undecodable image is 0).
    """
    labels = labels.long()
    total = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.bincount(labels, weights=correct.double(), minlength=num_classes)
    acc = torch.where(total > 0, hits / total.clamp(min=1), torch.full_like(total, float("nan")))
    return acc, total.long()
