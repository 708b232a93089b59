"""State dicts: wrapper prefixes, the Caffe weights' BGR input, recognising a VGG from its tensors.

Files are written and read by ``verydeep.checkpoint``; this module works on the tensors only.
"""

from __future__ import annotations

import torch
from torch import nn

from verydeep.models.configurations import CONFIGURATIONS
from verydeep.models.vgg import VGGSpec, make_features

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DDP (``module.``), torch.compile (``_orig_mod.``) and wrapper prefixes."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if key.startswith(p) and not key.startswith(("features.", "classifier.")):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return clean_state_dict(model.state_dict())


def caffe_bgr_to_rgb(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Caffe-convention weights expect BGR input: flip conv1's input channels to take RGB."""
    out = dict(state)
    out["features.0.weight"] = state["features.0.weight"].flip(1).contiguous()
    return out


def infer_spec(state: dict[str, torch.Tensor], dropout: float = 0.5) -> VGGSpec:
    """Recognise the configuration, batch norm, width and head of a VGG state dict."""
    convs = sorted(
        (int(k.split(".")[1]), v.shape)
        for k, v in state.items()
        if k.startswith("features.") and k.endswith(".weight") and v.ndim == 4
    )
    if not convs or "classifier.0.weight" not in state or "classifier.6.weight" not in state:
        raise ValueError("not a VGG state dict: expected features.N.weight and classifier.{0,3,6}.* keys")
    bn = any(k.endswith("running_mean") for k in state)
    layout = [(i, s[2]) for i, s in convs]
    for config in CONFIGURATIONS:
        probe = make_features(VGGSpec(config=config, batch_norm=bn, width=1 / 64))
        ref = [(i, m.kernel_size[0]) for i, m in enumerate(probe) if isinstance(m, nn.Conv2d)]
        if ref == layout:
            break
    else:
        raise ValueError(f"state dict's conv layout {layout} matches no VGG configuration")
    width = convs[0][1][0] / 64
    last = convs[-1][1][0]
    fc1 = state["classifier.0.weight"]
    head = int(round((fc1.shape[1] / last) ** 0.5))
    spec = VGGSpec(
        config=config, batch_norm=bn, num_classes=state["classifier.6.weight"].shape[0],
        width=width, fc_features=fc1.shape[0], head_size=head, dropout=dropout,
    )
    if spec.channels(512) != last or head * head * last != fc1.shape[1]:
        raise ValueError("state dict's channel widths are not a uniform multiple of VGG's")
    return spec
