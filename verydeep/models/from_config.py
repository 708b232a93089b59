"""The network a run configuration describes: its ``VGGSpec`` (the net itself, with its init
scheme and starting weights, is built by ``verydeep.train.starting_net``)."""

from __future__ import annotations

from verydeep.models.config import ModelConfig
from verydeep.models.registry import resolve
from verydeep.models.vgg import VGGSpec


def spec_from_config(cfg: ModelConfig, num_classes: int, crop_size: int) -> VGGSpec:
    config, bn = resolve(cfg.name)
    if cfg.num_classes is not None and cfg.num_classes != num_classes:
        raise ValueError(
            f"model.num_classes={cfg.num_classes} but the training set has {num_classes} classes"
        )
    head = cfg.head_size if cfg.head_size is not None else max(1, crop_size // 32)
    return VGGSpec(
        config=config, batch_norm=bn if cfg.batch_norm is None else cfg.batch_norm,
        num_classes=num_classes, width=cfg.width, fc_features=cfg.fc_features,
        head_size=head, dropout=cfg.dropout,
    )
