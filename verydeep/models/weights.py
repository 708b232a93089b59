"""Weights I/O: safetensors and PyTorch files, torchvision and Caffe conventions.

Every file is read with safetensors or ``torch.load(..., weights_only=True)``: no arbitrary
unpickling, so a checkpoint from the internet cannot run code on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from verydeep.errors import CheckpointError
from verydeep.models.configurations import CONFIGURATIONS
from verydeep.models.vgg import VGG, VGGSpec, make_features
from verydeep.safe_load import DIGEST_KEY, load_safetensors_file, load_torch_file, tensors_sha256

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
        # safetensors has no checksum of its own: the digest lets read_weights find damage.
        save_file(state, str(path), metadata={"verydeep": json.dumps(info), DIGEST_KEY: tensors_sha256(state)})
    else:
        torch.save({"model": state, "spec": spec, "meta": meta or {}}, path)
    return path


# What a run folder stands for where a weights file is expected, in order of preference.
RUN_FOLDER_WEIGHTS = ("best.pt", "last.pt")


def weights_file(path: str | Path) -> Path:
    """A weights file as given, or a run folder's best checkpoint (``last.pt`` before the run
    has validated once): the one rule behind ``--checkpoint``, ``model.init_from`` and
    ``model.weights``."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in RUN_FOLDER_WEIGHTS:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"run folder {path} holds no {' or '.join(RUN_FOLDER_WEIGHTS)}")


def read_weights(path: str | Path, *, ema: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) from our files, training checkpoints (or a run folder: see
    :func:`weights_file`) or foreign VGG state dicts. ``ema``: a training checkpoint's moving
    average of the weights (``train.ema_decay``) instead of its weights.

    Read through ``verydeep.safe_load``: no code runs, and a damaged or truncated file fails
    with a CheckpointError naming it."""
    path = weights_file(path)
    if ema and path.suffix == ".safetensors":
        raise CheckpointError(f"{path}: an exported file holds one set of weights; --ema needs a training checkpoint")
    if path.suffix == ".safetensors":
        state, metadata = load_safetensors_file(path)
        raw_meta = metadata.get("verydeep")
        meta = json.loads(raw_meta) if raw_meta else {}
        return clean_state_dict(state), meta
    obj = load_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    if ema:
        if not isinstance(obj.get("ema"), dict):
            raise CheckpointError(f"{path} holds no EMA weights (its run was trained without train.ema_decay)")
        obj = {**obj, "model": obj["ema"]}
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
        raise CheckpointError(f"{path}: entry {bad!r} is not a tensor; not a VGG state dict")
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
        raise CheckpointError(f"{source}: weights do not fit {spec}: {e}") from None
    return model


def load_model(path: str | Path, *, caffe_bgr: bool = False, dropout: float | None = None) -> VGG:
    """Build the net described by a weights file and load its weights (strict)."""
    state, meta = read_weights(path)
    return model_from_state(state, meta, caffe_bgr=caffe_bgr, dropout=dropout, source=path)
