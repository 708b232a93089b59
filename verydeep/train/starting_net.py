"""The net a run starts from: the configured init scheme, then a shallower net's layers
(``model.init_from``, the paper's start from net A) or full weights (``model.weights``).

It lives in ``train/`` because it reads checkpoint files (``verydeep.checkpoint``), which
themselves build on ``verydeep.models``."""

from __future__ import annotations

import logging

from verydeep.checkpoint import load, load_model
from verydeep.models.config import ModelConfig
from verydeep.models.from_config import spec_from_config
from verydeep.models.init import init_from_shallower, initialise
from verydeep.models.vgg import VGG
from verydeep.models.weights import caffe_bgr_to_rgb

log = logging.getLogger(__name__)


def model_from_config(cfg: ModelConfig, num_classes: int, crop_size: int) -> VGG:
    """A fresh net: init scheme, then (optionally) a shallower net's layers or full weights."""
    spec = spec_from_config(cfg, num_classes, crop_size)
    model = initialise(VGG(spec), cfg.init, std=cfg.init_std)
    log.info("model %s%s width %g: init %s", spec.config, " +BN" if spec.batch_norm else "",
             spec.width, cfg.init)
    if cfg.init_from and cfg.weights:
        raise ValueError("model.init_from and model.weights are exclusive: pick one")
    if cfg.init_from:
        source = load_model(cfg.init_from, caffe_bgr=cfg.caffe_bgr)
        copied = init_from_shallower(model, source, num_convs=cfg.init_from_convs)
        log.info("initialised %d tensors from %s (net %s)", len(copied), cfg.init_from, source.spec.config)
    elif cfg.weights:
        state = load(cfg.weights).weights
        if cfg.caffe_bgr:
            state = caffe_bgr_to_rgb(state)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"model.weights={cfg.weights}: does not fit {spec}: {e}") from None
        log.info("loaded all weights from %s", cfg.weights)
    return model
