"""``model.freeze_convs``: fine-tuning the FC layers only (the paper's last ILSVRC ensemble
member, Sec. 4.5). After a step with the paper's SGD (momentum, weight decay) every conv weight
is bitwise what it was and every FC layer has moved."""

import torch

from verydeep.checkpoint import load, save_weights
from verydeep.config import load_config
from verydeep.models import create_model
from verydeep.training_config import OptimConfig
from verydeep.train.loop import train
from verydeep.train.optim import build_optimizer, freeze_convolutions

from .conftest import TINY_OVERRIDES


def test_frozen_convs_are_out_of_the_optimiser():
    model = create_model("A", num_classes=3, width=1 / 16, head_size=1, fc_features=16)
    assert freeze_convolutions(model) == 16  # 8 convs x (weight, bias)
    params = {id(p) for g in build_optimizer(model, OptimConfig(), torch.device("cpu")).param_groups for p in g["params"]}
    assert params == {id(p) for p in model.classifier.parameters()}
    assert not any(p.requires_grad for p in model.features.parameters())


def test_one_step_moves_the_fc_layers_only(tiny_imagenet, tmp_path):
    start = create_model("A", num_classes=3, width=0.0625, head_size=1, fc_features=32, dropout=0.0)
    save_weights(start, tmp_path / "start.safetensors")
    cfg = load_config(None, [*TINY_OVERRIDES, f"data.root={tiny_imagenet}", f"model.weights={tmp_path / 'start.safetensors'}",
                             "model.freeze_convs=true", "train.max_iterations=1", "train.plot=false",
                             "optim.weight_decay=0.0005", "optim.momentum=0.9"])
    train(cfg, tmp_path / "run")
    before = load(tmp_path / "start.safetensors").weights
    after = load(tmp_path / "run" / "last.pt").weights
    for key, value in before.items():
        if key.startswith("features."):
            assert torch.equal(after[key], value), key
        else:
            assert not torch.equal(after[key], value), key
