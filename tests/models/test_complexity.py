"""MAC counts against a count by hand from Table 1's layer list."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from verydeep.models import create_model
from verydeep.models.complexity import forward_macs


def hand_count(model, size: int) -> int:
    """Convs: H x W x C_in x C_out x k x k at each layer's resolution; pools halve it."""
    total = 0
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            total += size * size * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.MaxPool2d):
            size //= 2
    return total + sum(fc.in_features * fc.out_features for fc in model.fc_layers)


@pytest.mark.parametrize("name", ["vgg11", "vgg11_lrn", "vgg16_c", "vgg19_bn"])
def test_forward_macs_match_the_hand_count(name):
    model = create_model(name, num_classes=7, width=1 / 16, head_size=2)
    assert forward_macs(model, 64) == hand_count(model, 64)


def test_full_vgg16_is_15_5_gmacs_and_the_model_is_untouched():
    with torch.device("meta"):
        model = create_model("vgg16")
    model.train()
    macs = forward_macs(model, 224)
    assert macs == hand_count(model, 224)
    assert round(macs / 1e9, 2) == 15.47  # the often-quoted 15.5 GMACs of VGG16 at 224
    assert model.training
