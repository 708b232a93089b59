"""Optimisers (SGD as the paper, Adam, AdamW) and their parameter groups."""

from __future__ import annotations

import torch
from torch import nn

from verydeep.train.config import OptimConfig


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    if not cfg.no_decay_bias_norm:
        return [{"params": [p for p in model.parameters() if p.requires_grad],
                 "weight_decay": cfg.weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))
            (no_decay if is_norm or name == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg)
    # foreach kernels on CUDA (one launch per group instead of per tensor); plain loops on CPU
    # keep the update bitwise identical across runs.
    extra = {"foreach": device.type == "cuda"}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **extra)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **extra)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **extra)
