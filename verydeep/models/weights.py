"""Weights I/O: safetensors and PyTorch files, torchvision and Caffe conventions.

Every file is read with safetensors or ``torch.load(..., weights_only=True)``: no arbitrary
unpickling, so a checkpoint from the internet cannot run code on load.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from verydeep.models.configurations import CONFIGURATIONS
from verydeep.models.vgg import VGG, VGGSpec, make_features

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


def save_weights(model: VGG, path: str | Path, meta: dict | None = None) -> Path:
    """Save weights (+ the spec needed to rebuild the net) as .safetensors or a .pt file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model_state_dict(model).items()}
    spec = model.spec.to_dict() if isinstance(model, VGG) else None
    info = {"spec": spec, **(meta or {})}
    if path.suffix == ".safetensors":
        save_file(state, str(path), metadata={"verydeep": json.dumps(info)})
    else:
        torch.save({"model": state, "spec": spec, "meta": meta or {}}, path)
    return path


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) from our files, training checkpoints or foreign VGG state dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get("verydeep")
        meta = json.loads(raw_meta) if raw_meta else {}
        return clean_state_dict(load_file(str(path))), meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"refused to load {path}: it holds Python objects other than tensors and plain "
            f"containers, and verydeep never unpickles arbitrary code (weights_only=True). "
            f"Convert it to safetensors in a trusted environment. Detail: {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    meta: dict = {}
    for key in ("model", "state_dict", "model_state_dict"):
        if key in obj and isinstance(obj[key], dict):
            meta = {k: v for k, v in obj.items() if k != key and k in ("spec", "meta", "config", "classes", "class_names")}
            if isinstance(obj.get("meta"), dict):
                meta.update(obj["meta"])
            obj = obj[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        bad = next(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise ValueError(f"{path}: entry {bad!r} is not a tensor; not a VGG state dict")
    return clean_state_dict(obj), meta


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


def model_from_state(state: dict[str, torch.Tensor], meta: dict, *, caffe_bgr: bool = False,
                     dropout: float | None = None, source: str | Path = "weights") -> VGG:
    """The net a state dict (+ its metadata) describes, with those weights loaded (strict)."""
    spec = VGGSpec(**meta["spec"]) if meta.get("spec") else infer_spec(state)
    if dropout is not None:
        spec = VGGSpec(**{**spec.to_dict(), "dropout": dropout})
    if caffe_bgr:
        state = caffe_bgr_to_rgb(state)
    model = VGG(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{source}: weights do not fit {spec}: {e}") from None
    return model


def load_model(path: str | Path, *, caffe_bgr: bool = False, dropout: float | None = None) -> VGG:
    """Build the net described by a weights file and load its weights (strict)."""
    state, meta = read_weights(path)
    return model_from_state(state, meta, caffe_bgr=caffe_bgr, dropout=dropout, source=path)
