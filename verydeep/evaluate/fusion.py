"""Combining predictions: the mean of softmax class posteriors, and aligning nets' class orders.

The paper combines every set of predictions the same way, by averaging soft-max class
posteriors: an image and its flip (Sec. 3.2), test scales (Sec. 4.2), dense and multi-crop
evaluation (Sec. 4.3, Table 5) and several nets (fusion, Sec. 4.4, Table 6).
``PosteriorAverage`` is that one rule; protocols, the evaluator, ``verydeep fuse`` and ``predict``
all go through it. It keeps the running sum and divides once, at the end. A row of the table
(``mean_over_nets``) is, per image, the mean over nets of each net's mean over its passes
(method x Q), so nets tested at different numbers of scales weigh the same.

Nets trained on the same label set may still list classes in another order (or be foreign
weights, e.g. torchvision's, whose order is the sorted ImageNet synsets); ``class_permutation``
maps each net's outputs onto the reference order before averaging.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


class PosteriorAverage:
    """Running mean of posterior tensors of one shape ([N, K], or [K] for one image)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, posteriors: torch.Tensor, count: int = 1) -> PosteriorAverage:
        """Add ``posteriors``, or a sum of ``count`` of them (another average's ``total``)."""
        if self.total is None:
            self.total = posteriors
        elif posteriors.shape != self.total.shape:
            raise ValueError(f"cannot average posteriors of different shapes: "
                             f"{tuple(self.total.shape)} and {tuple(posteriors.shape)}")
        else:
            # Out of place: the first tensor added is the caller's and must stay as it was.
            self.total = self.total + posteriors
        self.count += count
        return self

    def merge(self, other: PosteriorAverage) -> PosteriorAverage:
        """Fold in another average, weighted by how many posteriors it holds."""
        if other.total is None:
            return self
        return self.add(other.total, other.count)

    def mean(self) -> torch.Tensor:
        if self.total is None:
            raise ValueError("nothing to average: no posteriors given")
        return self.total / self.count


def average_posteriors(posteriors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Element-wise mean of posterior tensors of one shape, summed in the order given."""
    average = PosteriorAverage()
    for p in posteriors:
        average.add(p)
    return average.mean()


def mean_over_nets(nets: Iterable[Iterable[torch.Tensor]]) -> torch.Tensor:
    """Per image, the mean over nets of each net's mean over its posteriors (its passes).

    ``nets``: per net, its passes' posteriors [N, K] for the same N images; they may be lazy
    (generators), so that only the running sums and the tensor being added are held.
    """
    fused = PosteriorAverage()
    for passes in nets:
        fused.add(average_posteriors(passes))
    return fused.mean()


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


def align_classes(nets: Sequence, classes: Sequence[str] | None
                  ) -> tuple[int, list[str] | None, list[torch.Tensor | None]]:
    """(number of classes, the class order to report in, each net's permutation onto it), for
    ``EvalNet``s.

    The order is ``classes`` (the dataset's) or else the first net's; nets without class ids
    must already predict in it.
    """
    num_classes = {net.model.spec.num_classes for net in nets}
    if len(num_classes) != 1:
        raise ValueError(f"cannot fuse nets with different numbers of classes: {sorted(num_classes)}")
    (k,) = num_classes
    reference = list(classes) if classes is not None else nets[0].classes
    if reference is not None and len(reference) != k:
        raise ValueError(f"the data has {len(reference)} classes but the net predicts {k}")
    return k, reference, [class_permutation(net.classes, reference, source=net.source) for net in nets]
