"""Fine-tuning pretrained weights (``model.pretrained``, ``verydeep train --pretrained FILE``) from
a torchvision-format state dict made here: our VGG's state dict (torchvision's keys, as
tests/models/test_torchvision_compat.py shows) for 7 classes, saved with ``torch.save``, then
fine-tuned on the tiny 3-class data."""

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from verydeep.checkpoint import load, save_weights
from verydeep.config import ConfigError, load_config
from verydeep.data.config import IMAGENET_MEAN, IMAGENET_STD
from verydeep.errors import CheckpointError, CheckpointNotFoundError
from verydeep.models import create_model
from verydeep.train.input_convention import pretrained_convention
from verydeep.train.loop import train
from verydeep.train.optim import build_optimizer
from verydeep.train.schedules import LRSchedule
from verydeep.train.start_check import check_start
from verydeep.train.starting_net import model_from_config, starting_net
from verydeep.train.step import StepSettings, train_step
from verydeep.train.loss import classification_loss
from verydeep.parallel.distributed import DistInfo
from verydeep.parallel.strategy import build_strategy
from verydeep.parallel.config import ParallelConfig
from verydeep.training_config import OptimConfig, ScheduleConfig

from .conftest import TINY_OVERRIDES

CLASSES = [f"n{c:08d}" for c in range(3)]  # the tiny data's
HEAD = ("classifier.6.weight", "classifier.6.bias")


def _source(name="A", classes=7, bn=False, seed=0):
    torch.manual_seed(seed)
    return create_model(name, num_classes=classes, batch_norm=bn, width=0.0625, head_size=1, fc_features=32,
                        init="glorot")


@pytest.fixture
def torchvision_file(tmp_path):
    """A torchvision-format file: a bare state dict (torchvision's keys), 7 classes."""
    path = tmp_path / "vgg11_7classes.pth"
    torch.save(_source().state_dict(), path)
    return path


def _cfg(data, *overrides):
    return load_config(None, [*TINY_OVERRIDES, f"data.root={data}", "train.plot=false", *overrides])


def test_weights_copied_and_a_new_head_for_the_data_classes(torchvision_file, tmp_path, caplog):
    cfg = _cfg(tmp_path, f"model.pretrained={torchvision_file}")
    with caplog.at_level(logging.INFO, logger="verydeep.train.starting_net"):
        start = starting_net(cfg.model, 3, 32, classes=CLASSES)
    source = torch.load(torchvision_file, weights_only=True)
    state = start.model.state_dict()
    for key, value in source.items():
        if key in HEAD:
            continue
        assert torch.equal(state[key], value), key
    assert state["classifier.6.weight"].shape == (3, 32) and state["classifier.6.bias"].shape == (3,)
    assert start.pretrained == frozenset(source) - set(HEAD)
    lines = [r.getMessage() for r in caplog.records if "model.pretrained" in r.getMessage()]
    assert lines == [f"model.pretrained={torchvision_file}: loaded 8 conv layers, classifier.0, classifier.3; "
                     f"new: classifier.6 (3 classes, the file's head has 7)"]


def test_same_classes_keep_the_file_classifier_other_classes_replace_it(tmp_path):
    net = _source(classes=3)
    save_weights(net, tmp_path / "same.safetensors", classes=CLASSES)
    save_weights(net, tmp_path / "other.safetensors", classes=["a", "b", "c"])
    cfg = _cfg(tmp_path, f"model.pretrained={tmp_path / 'same.safetensors'}")
    same = starting_net(cfg.model, 3, 32, classes=CLASSES)
    assert torch.equal(same.model.classifier[6].weight, net.classifier[6].weight)
    assert same.pretrained == frozenset(net.state_dict())
    cfg = _cfg(tmp_path, f"model.pretrained={tmp_path / 'other.safetensors'}")
    other = starting_net(cfg.model, 3, 32, classes=CLASSES)
    assert not torch.equal(other.model.classifier[6].weight, net.classifier[6].weight)
    assert "classifier.6.weight" not in other.pretrained


def test_head_size_and_fc_width_follow_the_file(tmp_path):
    """A torchvision net takes a 7x7 head at any input (its adaptive pool): so does the run's,
    unless model.head_size is set."""
    path = tmp_path / "head2.pth"
    torch.save(create_model("A", num_classes=5, width=0.0625, head_size=2, fc_features=24).state_dict(), path)
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("model.fc_features")]
    cfg = load_config(None, [*overrides, f"model.pretrained={path}"])
    model = model_from_config(cfg.model, 3, 32)
    assert (model.spec.head_size, model.spec.fc_features) == (2, 24)


def test_a_layer_that_does_not_fit_is_one_line(torchvision_file, tmp_path):
    cfg = _cfg(tmp_path, f"model.pretrained={torchvision_file}", "model.width=0.125")
    with pytest.raises(CheckpointError) as e:
        model_from_config(cfg.model, 3, 32)
    assert str(e.value) == (f"model.pretrained={torchvision_file}: features.0.weight is [4, 3, 3, 3] in the file, "
                            f"[8, 3, 3, 3] in this run's net (vgg11 width 0.125); the file holds a vgg11 width "
                            f"0.0625: set model.name=vgg11 model.width=0.0625")
    cfg = _cfg(tmp_path, f"model.pretrained={torchvision_file}", "model.name=B")  # vgg13: another conv layout
    with pytest.raises(CheckpointError, match=r"the file has no features.2.weight, which this run's net needs "
                                              r"\(vgg13 width 0.0625\); the file holds a vgg11 width 0.0625: set "
                                              r"model.name=vgg11 model.width=0.0625$"):
        model_from_config(cfg.model, 3, 32)
    cfg = _cfg(tmp_path, f"model.pretrained={torchvision_file}", "model.name=vgg11_bn")
    with pytest.raises(CheckpointError, match=r"the file has no features.1.weight, which this run's net needs "
                                              r"\(vgg11_bn width 0.0625\); the file holds a vgg11 width"):
        model_from_config(cfg.model, 3, 32)
    cfg = _cfg(tmp_path, f"model.weights={torchvision_file}")  # full weights: the head must fit too
    with pytest.raises(CheckpointError, match=r"classifier.6.weight is \[7, 32\] in the file, \[3, 32\] in this "
                                              r"run's net \(vgg11 width 0.0625\); to fine-tune on other classes, use "
                                              r"model.pretrained$"):
        model_from_config(cfg.model, 3, 32)


def test_the_command_line_says_a_misfit_in_one_line_with_exit_4(torchvision_file, tiny_imagenet, tmp_path):
    sets = [x for o in TINY_OVERRIDES for x in ("--set", o)]
    result = subprocess.run([sys.executable, "-m", "verydeep", "train", "--config", "finetune", "--data",
                             str(tiny_imagenet), *sets, "--set", "model.width=0.125", "--pretrained", str(torchvision_file),
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 4, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "features.0.weight" in line]
    assert len(errors) == 1 and "[4, 3, 3, 3] in the file, [8, 3, 3, 3]" in errors[0], result.stderr[-2000:]
    assert "VGGSpec" not in result.stderr and "size mismatch" not in result.stderr
    assert not (tmp_path / "run").exists()  # a failed start leaves no folder


def test_missing_file_and_exclusive_keys_are_refused_before_the_run(tmp_path, tiny_imagenet, torchvision_file):
    with pytest.raises(CheckpointNotFoundError, match="model.pretrained=.*nothing.pth: no such file"):
        check_start(_cfg(tiny_imagenet, f"model.pretrained={tmp_path / 'nothing.pth'}"))
    with pytest.raises(ConfigError, match="weights and pretrained are exclusive"):
        _cfg(tiny_imagenet, f"model.pretrained={torchvision_file}", f"model.weights={torchvision_file}")
    with pytest.raises(ConfigError, match="pretrained_lr_scale must be a finite number > 0"):
        _cfg(tiny_imagenet, "optim.pretrained_lr_scale=0")


def test_the_input_convention_comes_from_the_file_else_torchvision(torchvision_file, tmp_path, caplog):
    cfg = _cfg(tmp_path, f"model.pretrained={torchvision_file}", "data.normalize=mean_rgb", "data.mean=[0.1,0.2,0.3]")
    with caplog.at_level(logging.WARNING, logger="verydeep.train.input_convention"):
        tv = pretrained_convention(cfg, load(torchvision_file))
    assert (tv.data.normalize, tv.data.mean, tv.data.std) == ("mean_std", IMAGENET_MEAN, IMAGENET_STD)
    assert "records no input convention (a bare state dict): taking torchvision's" in caplog.text
    caffe = {"normalize": "caffe", "mean": [0.5, 0.4, 0.3], "std": [1.0, 1.0, 1.0]}
    save_weights(_source(), tmp_path / "caffe.safetensors", preprocessing=caffe)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="verydeep.train.input_convention"):
        ours = pretrained_convention(cfg, load(tmp_path / "caffe.safetensors"))
    assert (ours.data.normalize, ours.data.mean, ours.data.std) == ("caffe", caffe["mean"], caffe["std"])
    assert caplog.text == ""


def _groups_model(bn=False):
    model = _source(classes=3, bn=bn)
    pretrained = frozenset(k for k, _ in model.named_parameters() if not k.startswith("classifier.6."))
    return model, pretrained


def test_pretrained_layers_train_at_a_scaled_lr_under_the_schedule():
    model, pretrained = _groups_model(bn=True)
    cfg = OptimConfig(lr=0.1, pretrained_lr_scale=0.25, no_decay_bias_norm=True)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"), pretrained)
    groups = optimizer.param_groups
    head = {id(p) for p in model.classifier[6].parameters()}
    assert [("lr_scale" in g, {id(p) for p in g["params"]} <= head) for g in groups] == \
        [(False, True), (False, True), (True, False), (True, False)]  # decay / no decay x new / pretrained
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    schedule = LRSchedule(ScheduleConfig(name="cosine"), cfg.lr, steps_per_epoch=4, epochs=1)
    strategy = build_strategy(model, ParallelConfig(), DistInfo(), crop_size=32)
    settings = StepSettings(loss_fn=classification_loss(0.0))
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    for step in range(3):
        train_step(strategy, optimizer, torch.amp.GradScaler("cpu", enabled=False), schedule, images, labels,
                   step=step, settings=settings)
        assert [g["lr"] for g in groups] == [schedule.lr(step)] * 2 + [schedule.lr(step) * 0.25] * 2
    assert schedule.lr(2) < schedule.lr(0)


def test_freeze_convs_with_pretrained_trains_the_fc_layers_only(torchvision_file, tiny_imagenet, tmp_path):
    cfg = _cfg(tiny_imagenet, f"model.pretrained={torchvision_file}", "model.freeze_convs=true",
               "optim.pretrained_lr_scale=0.1", "train.max_iterations=2", "train.epochs=1")
    train(cfg, tmp_path / "run")
    source = torch.load(torchvision_file, weights_only=True)
    after = load(tmp_path / "run" / "last.pt").weights
    for key, value in source.items():
        if key.startswith("features."):
            assert torch.equal(after[key], value), key
        elif key not in HEAD:
            assert not torch.equal(after[key], value), key
    assert after["classifier.6.weight"].shape == (3, 32)


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r and "val_loss" not in r]


def test_fine_tuning_lowers_the_loss_and_resumes_exactly_with_two_lr_groups(torchvision_file, tiny_imagenet,
                                                                            tmp_path):
    """Fine-tuned from the file, the training loss falls; stopped after 2 epochs and resumed for 4,
    the run (two LR groups, a per-epoch schedule) ends bitwise as the uninterrupted one."""
    sets = [f"model.pretrained={torchvision_file}", "optim.pretrained_lr_scale=0.5", "schedule.name=step",
            "schedule.step_size=2", "schedule.gamma=0.5", "model.dropout=0.5"]
    train(_cfg(tiny_imagenet, *sets, "train.epochs=4"), tmp_path / "full")
    losses = _losses(tmp_path / "full")
    assert len(losses) == 16 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    train(_cfg(tiny_imagenet, *sets, "train.epochs=2"), tmp_path / "split")
    train(_cfg(tiny_imagenet, *sets, "train.epochs=4"), tmp_path / "split", resume=True)
    full, split = load(tmp_path / "full" / "last.pt"), load(tmp_path / "split" / "last.pt")
    assert full.weights.keys() == split.weights.keys()
    for key in full.weights:
        assert torch.equal(full.weights[key], split.weights[key]), key
    groups = full.train["optimizer"]["param_groups"]
    assert [g.get("lr_scale") for g in groups] == [None, 0.5]
    assert split.train["optimizer"]["param_groups"] == groups
    for index, state in full.train["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], split.train["optimizer"]["state"][index]["momentum_buffer"])
