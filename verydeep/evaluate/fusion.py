"""Fusion of several nets (paper Sec. 4.3): average their softmax posteriors.

Nets trained on the same label set may still list classes in another order (or be foreign
weights, e.g. torchvision's, whose order is the sorted ImageNet synsets); ``class_permutation``
maps each net's outputs onto the reference order before averaging.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def average_posteriors(posteriors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Element-wise mean of several [N, K] posterior tensors."""
    if not posteriors:
        raise ValueError("nothing to fuse: no posteriors given")
    shapes = {tuple(p.shape) for p in posteriors}
    if len(shapes) != 1:
        raise ValueError(f"cannot fuse posteriors of different shapes: {sorted(shapes)}")
    return torch.stack(list(posteriors)).mean(dim=0)


def class_permutation(model_classes: Sequence[str] | None, reference: Sequence[str] | None,
                      source: str = "model") -> torch.Tensor | None:
    """Index tensor ``perm`` with ``out[:, perm]`` in reference order; None if already aligned.

    Raises if the two label sets differ (names the first few missing classes).
    """
    if model_classes is None or reference is None or list(model_classes) == list(reference):
        return None
    where = {c: i for i, c in enumerate(model_classes)}
    missing = [c for c in reference if c not in where]
    extra = [c for c in model_classes if c not in set(reference)]
    if missing or extra:
        raise ValueError(
            f"{source}: its {len(model_classes)} classes differ from the {len(reference)} to evaluate "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"extra {extra[:5]}{'...' if len(extra) > 5 else ''})"
        )
    return torch.tensor([where[c] for c in reference], dtype=torch.long)
