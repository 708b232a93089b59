"""Optimisers (SGD as the paper, Adam, AdamW) and their parameter groups."""

from __future__ import annotations

import torch
from torch import nn

from verydeep.models.weights import clean_state_dict
from verydeep.training_config import OptimConfig


def parameter_groups(model: nn.Module, cfg: OptimConfig, pretrained: frozenset[str] = frozenset()) -> list[dict]:
    """The trainable parameters in groups: by weight decay (``no_decay_bias_norm``), and, for a
    fine-tuning run, by LR: those loaded from the pretrained file (``pretrained``: their
    torchvision names; :mod:`verydeep.train.pretrained`) get ``lr_scale`` =
    ``optim.pretrained_lr_scale``, which the step multiplies the schedule's LR by. The new
    layers' groups come first."""
    groups = _decay_groups(model, cfg)
    if not pretrained or cfg.pretrained_lr_scale == 1.0:
        return groups
    names = {id(p): name for name, p in clean_state_dict(dict(model.named_parameters())).items()}
    new, loaded = [], []
    for group in groups:
        params = [p for p in group["params"] if names[id(p)] not in pretrained]
        scaled = [p for p in group["params"] if names[id(p)] in pretrained]
        new += [{**group, "params": params}] if params else []
        loaded += [{**group, "params": scaled, "lr": cfg.lr * cfg.pretrained_lr_scale,
                    "lr_scale": cfg.pretrained_lr_scale}] if scaled else []
    return new + loaded


def _decay_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
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


def freeze_convolutions(model: nn.Module) -> int:
    """``model.freeze_convs``: the conv layers (and their batch norm) keep their weights while
    the FC layers train (the paper's FC-only fine-tuning, Sec. 4.5). Their gradients are
    switched off, so :func:`parameter_groups` leaves them out of the optimiser. Returns the
    number of tensors frozen."""
    frozen = 0
    for p in model.features.parameters():
        p.requires_grad_(False)
        frozen += 1
    return frozen


def kernel_choice(params: list[nn.Parameter], device: torch.device) -> dict:
    """``fused`` or ``foreach`` for the optimiser over ``params`` on ``device``.

    The fused kernels where every parameter is a plain tensor, on CUDA and on the CPU alike: one
    pass over each tensor instead of one per term of the update (on the demo net's CPU step the
    SGD update takes 0.6-1.1 ms fused against 2.1-2.7 ms in torch's default per-tensor loops,
    BENCHMARKS.md), and they take the step's device-side non-finite flag, so the step needs no
    host read (``verydeep.train.step``). Their arithmetic is deterministic, so a resumed run
    stays bitwise equal to an uninterrupted one. DTensor shards (the hybrid mode's FC layers)
    keep torch's unfused kernels: foreach on CUDA, per-tensor loops on the CPU."""
    if all(type(p) is nn.Parameter for p in params):
        return {"fused": True}
    return {"foreach": device.type == "cuda"}


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device,
                    pretrained: frozenset[str] = frozenset()) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg, pretrained)
    extra = kernel_choice([p for g in groups for p in g["params"]], device)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **extra)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **extra)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **extra)


def initialise_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Zero momentum buffers for a fused SGD that has not stepped yet.

    Fused SGD allocates its buffers uninitialised on its first step and fills them there; if
    that first step is dropped (``found_inf``), the next step would read the garbage. A zero
    buffer gives the same first update (momentum x 0 + gradient = gradient), so this changes
    no arithmetic. A no-op once the optimiser has state."""
    if optimizer.state or not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group["momentum"] != 0:
            for p in group["params"]:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
