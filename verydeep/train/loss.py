"""The training criterion: the one place the loss is defined.

Cross-entropy over the batch (the paper's multinomial logistic regression objective), with
label smoothing (``train.label_smoothing``) and soft labels: MixUp/CutMix batches carry
[N, K] class probabilities instead of class indices, and ``F.cross_entropy`` takes either.
The step hands the criterion to the parallel strategy's forward-backward (``loss_fn``), which
applies it to each micro-batch's logits wherever they are computed (the last pipeline stage,
each data-parallel rank); the strategies define no loss of their own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from verydeep.parallel.base import upcast

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def classification_loss(label_smoothing: float = 0.0) -> LossFn:
    """``loss_fn(logits, target) -> mean loss`` over the batch; ``target`` class indices [N]
    or class probabilities [N, K]. Low-precision (AMP) logits are taken in float32."""
    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(upcast(logits), target, label_smoothing=label_smoothing)

    return loss_fn
