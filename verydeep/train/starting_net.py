"""The net a run starts from: the configured init scheme, then a shallower net's layers
(``model.init_from``, the paper's start from net A), full weights (``model.weights``) or
pretrained weights with a new classifier (``model.pretrained``: ``verydeep.train.pretrained``).

It lives in ``train/`` because it reads checkpoint files (``verydeep.checkpoint``), which
themselves build on ``verydeep.models``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from verydeep.checkpoint import Checkpoint, load, load_model
from verydeep.models.config import ModelConfig
from verydeep.models.from_config import spec_from_config
from verydeep.models.init import init_from_shallower, initialise
from verydeep.models.vgg import VGG
from verydeep.models.weights import caffe_bgr_to_rgb
from verydeep.train.pretrained import check_fits, describe, load_pretrained, pretrained_spec

log = logging.getLogger(__name__)


@dataclass
class StartingNet:
    model: VGG
    # tensor names (torchvision keys) loaded by model.pretrained: optim.pretrained_lr_scale applies to them
    pretrained: frozenset[str] = frozenset()


def model_from_config(cfg: ModelConfig, num_classes: int, crop_size: int, *,
                      classes: list[str] | None = None) -> VGG:
    """A fresh net: init scheme, then (optionally) a shallower net's layers, full weights or
    pretrained ones (``classes``: the data's, compared with the classes a pretrained file records)."""
    return starting_net(cfg, num_classes, crop_size, classes=classes).model


def starting_net(cfg: ModelConfig, num_classes: int, crop_size: int, *, classes: list[str] | None = None,
                 pretrained: Checkpoint | None = None) -> StartingNet:
    """:func:`model_from_config`'s net, and which of its tensors came from ``model.pretrained``
    (``pretrained``: that file, loaded already; else it is loaded here)."""
    spec = spec_from_config(cfg, num_classes, crop_size)
    if cfg.pretrained:
        pretrained = pretrained or load(cfg.pretrained)
        spec = pretrained_spec(spec, pretrained.weights, head_size_set=cfg.head_size is not None,
                               fc_features_set=cfg.fc_features is not None)
    model = initialise(VGG(spec), cfg.init, std=cfg.init_std)
    log.info("model %s%s width %g: init %s", spec.config, " +BN" if spec.batch_norm else "",
             spec.width, cfg.init)
    if cfg.init_from:
        source = load_model(cfg.init_from, caffe_bgr=cfg.caffe_bgr)
        copied = init_from_shallower(model, source, num_convs=cfg.init_from_convs)
        log.info("initialised %d tensors from %s (net %s)", len(copied), cfg.init_from, source.spec.config)
    elif cfg.weights:
        state = load(cfg.weights).weights
        if cfg.caffe_bgr:
            state = caffe_bgr_to_rgb(state)
        check_fits(spec, state, f"model.weights={cfg.weights}")
        model.load_state_dict(state, strict=True)
        log.info("loaded all weights from %s", cfg.weights)
    elif cfg.pretrained:
        fit = load_pretrained(model, pretrained, cfg.pretrained, classes=classes, caffe_bgr=cfg.caffe_bgr)
        log.info("%s", describe(fit, model, cfg.pretrained))
        return StartingNet(model, frozenset(fit.loaded))
    return StartingNet(model)
