"""Initialisation schemes, named in config.

- ``gaussian``: weights ~ N(0, std) (std 0.01 by default), biases 0 (the paper's net A).
- ``glorot`` / ``xavier``: Glorot & Bengio normal init, biases 0 (works without pre-training).
- ``kaiming``: He et al. fan-out normal for convs (torchvision's scheme), N(0, 0.01) for FC.
  The FC std does not follow the fan-in: right for the full 25088-4096-4096 head, but a
  narrow head (``width`` 1/8: fan-in 256-512) then passes on a fifth of its input's scale per
  layer, and such nets can sit at chance for many epochs; use ``glorot`` for them.
- from a shallower net: :func:`init_from_shallower`.

Batch-norm layers always start at weight 1, bias 0.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from verydeep.models.config import DEFAULT_INIT
from verydeep.models.configurations import conv_specs
from verydeep.models.vgg import VGG

log = logging.getLogger(__name__)

SCHEMES = ("gaussian", "glorot", "xavier", "kaiming")


def initialise(model: nn.Module, scheme: str = DEFAULT_INIT, std: float = 0.01,
               generator: torch.Generator | None = None) -> nn.Module:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; known: {', '.join(SCHEMES)} "
                         "(to start from a trained shallower net, set model.init_from)")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "gaussian":
                nn.init.normal_(m.weight, 0.0, std, generator=generator)
            elif scheme in ("glorot", "xavier"):
                nn.init.xavier_normal_(m.weight, generator=generator)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            else:
                nn.init.normal_(m.weight, 0.0, 0.01, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _conv_positions(model: VGG) -> list[tuple[int, int, int]]:
    """(block, position in block, features index) for every conv of ``model``."""
    specs = conv_specs(model.spec.config)
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    out, seen = [], {}
    for (block, _, _), idx in zip(specs, convs):
        pos = seen.get(block, 0)
        seen[block] = pos + 1
        out.append((block, pos, idx))
    return out


def shallower_mapping(source: VGG, target: VGG, num_convs: int = 4) -> list[tuple[str, str]]:
    """Which of ``source``'s layers initialise which of ``target``'s (module names).

    The paper initialises "the first four convolutional layers and the last three
    fully-connected layers" of a deeper net from a trained net A. Taken literally by index the
    shapes do not match (A's second conv is 64->128, D's is 64->64), so we map *by position
    within a block*: the k-th conv of block b in the source initialises the k-th conv of block b
    in the target. For A -> B/C/D/E the first four convs of A (block 1 conv 1, block 2 conv 1,
    block 3 convs 1-2) land on the first conv of blocks 1 and 2 and the first two convs of block
    3: shapes match for every configuration. ``num_convs`` (default 4, the paper; -1 = all)
    takes the source's convs in order. The three FC layers are always copied.
    """
    tgt = {(b, p): i for b, p, i in _conv_positions(target)}
    src = _conv_positions(source)
    if num_convs >= 0:
        src = src[:num_convs]
    pairs = []
    for b, p, i in src:
        if (b, p) not in tgt:
            raise ValueError(
                f"cannot initialise {target.spec.config} from {source.spec.config}: source conv "
                f"features.{i} (block {b + 1}, conv {p + 1}) has no counterpart in the target"
            )
        pairs.append((f"features.{i}", f"features.{tgt[(b, p)]}"))
    pairs += [(f"classifier.{k}", f"classifier.{k}") for k in (0, 3, 6)]
    return pairs


@torch.no_grad()
def init_from_shallower(target: VGG, source: VGG, num_convs: int = 4) -> list[str]:
    """Copy layers of a trained shallower net into ``target``; returns the copied names.

    Refuses with a message naming both layers when shapes differ (e.g. different widths or
    class counts). Batch-norm layers following copied convs are copied too when both nets
    have batch norm.
    """
    src_mods, tgt_mods = dict(source.named_modules()), dict(target.named_modules())
    copied = []
    plan = []
    for s_name, t_name in shallower_mapping(source, target, num_convs):
        for suffix in ("weight", "bias"):
            s_t = getattr(src_mods[s_name], suffix)
            t_t = getattr(tgt_mods[t_name], suffix)
            if s_t.shape != t_t.shape:
                raise ValueError(
                    f"cannot initialise {t_name}.{suffix} {tuple(t_t.shape)} of net "
                    f"{target.spec.config} from {s_name}.{suffix} {tuple(s_t.shape)} of net "
                    f"{source.spec.config}: shapes differ (same width and num_classes needed)"
                )
            plan.append((t_t, s_t, f"{t_name}.{suffix} <- {s_name}.{suffix}"))
        if s_name.startswith("features") and source.spec.batch_norm and target.spec.batch_norm:
            s_bn = source.features[int(s_name.split(".")[1]) + 1]
            t_idx = int(t_name.split(".")[1]) + 1
            t_bn = target.features[t_idx]
            for key, t_t in t_bn.state_dict(keep_vars=True).items():
                s_t = s_bn.state_dict(keep_vars=True)[key]
                if s_t.shape == t_t.shape:
                    plan.append((t_t, s_t, f"features.{t_idx}.{key} <- (bn) {key}"))
    for t_t, s_t, what in plan:
        t_t.copy_(s_t)
        copied.append(what)
        log.info("init from shallower: %s", what)
    return copied
