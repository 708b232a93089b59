"""The paper's dense-evaluation form: the FC head re-expressed as convolutions.

FC1 becomes a ``head_size x head_size`` conv (7x7 at full size), FC2 and FC3 become 1x1 convs.
The convolution kernels are *views* of the Linear weights, so nothing is copied and the wrapper
adds nothing to a checkpoint. On an input of Q x Q' (multiples of 32) the class-score map is
(Q/32 - head_size + 1) x (Q'/32 - head_size + 1): 1x1 at 224, 2x2 at 256, 6x6 at 384, 10x10 at 512.

Pooling (``pooling``): a side that is not a multiple of 32 (at the paper's Q, the longer side
of most images) meets a max-pool with an odd input. ``floor`` (PyTorch's, the training
form's) drops the last row or column; ``ceil`` keeps it in a partial window, as Caffe, in
which the paper's dense numbers were made, rounds pooled sizes up. Training never sees the
difference (its crops are multiples of 32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from verydeep.models.config import DENSE_POOLING
from verydeep.models.vgg import VGG




class FullyConvolutionalVGG(nn.Module):
    def __init__(self, model: VGG, pooling: str = "floor") -> None:
        super().__init__()
        if pooling not in DENSE_POOLING:
            raise ValueError(f"dense pooling must be one of {', '.join(DENSE_POOLING)}, got {pooling!r}")
        self.model = model
        self.pooling = pooling

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling == "floor":
            return self.model.features(x)
        for layer in self.model.features:  # the same layers, each max-pool rounding up
            if isinstance(layer, nn.MaxPool2d):
                x = F.max_pool2d(x, layer.kernel_size, layer.stride, ceil_mode=True)
            else:
                x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class-score map [B, num_classes, H', W'] (pre-softmax)."""
        m = self.model
        fc1, fc2, fc3 = m.fc_layers
        relu1, drop1, relu2, drop2 = m.classifier[1], m.classifier[2], m.classifier[4], m.classifier[5]
        x = self.features(x)
        c, k = x.shape[1], m.spec.head_size
        if x.shape[-2] < k or x.shape[-1] < k:
            raise ValueError(
                f"input too small for dense evaluation: feature map {tuple(x.shape[-2:])} is smaller "
                f"than the {k}x{k} FC1 kernel (need at least {32 * k} px per side)"
            )
        x = drop1(relu1(F.conv2d(x, fc1.weight.view(fc1.out_features, c, k, k), fc1.bias)))
        x = drop2(relu2(F.conv2d(x, fc2.weight.view(fc2.out_features, fc2.in_features, 1, 1), fc2.bias)))
        return F.conv2d(x, fc3.weight.view(fc3.out_features, fc3.in_features, 1, 1), fc3.bias)


def fully_convolutional(model: VGG, pooling: str = "floor") -> FullyConvolutionalVGG:
    """The dense-evaluation form sharing ``model``'s parameters (no copy)."""
    if isinstance(model, FullyConvolutionalVGG):
        return model if model.pooling == pooling else FullyConvolutionalVGG(model.model, pooling)
    if not isinstance(model, VGG):
        raise TypeError(f"expected a verydeep VGG, got {type(model).__name__}")
    return FullyConvolutionalVGG(model, pooling)
