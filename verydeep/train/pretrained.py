"""Fine-tuning: a run that starts from pretrained weights (``model.pretrained``, ``verydeep train
--pretrained FILE``), as torchvision's ``--weights`` and timm's ``--pretrained --num-classes`` do.

The file (a torchvision state dict, a ``.safetensors`` export, a verydeep checkpoint or run
folder) holds the configured net (``model.name``, ``model.width``, batch norm). Every tensor is
copied into it except the last FC layer's (``classifier.6``), which is new (the init scheme's)
when the file's classes are not the dataset's: another count, or a recorded class list that
differs. Every other layer must fit exactly; one that does not is one line naming it and the two
shapes (:class:`~verydeep.errors.CheckpointError`, exit 4), with the file's own net when its
tensors say which it is.

Two sizes follow the file when the config leaves them unset (null): ``model.head_size`` (the
spatial size FC1 sees: torchvision's nets take 7 x 7 at any input size, their adaptive average
pool makes it so) and ``model.fc_features``. The input convention is set from the file by
``verydeep.train.input_convention.pretrained_convention``; the lower LR of the loaded layers
(``optim.pretrained_lr_scale``) by ``verydeep.train.optim.parameter_groups``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from verydeep.checkpoint import Checkpoint, check_shapes, check_spec
from verydeep.errors import CheckpointError
from verydeep.models.registry import CANONICAL
from verydeep.models.vgg import VGG, VGGSpec
from verydeep.models.weights import caffe_bgr_to_rgb, infer_spec

HEAD = "classifier.6"  # the classifier that is replaced: the last FC layer
OPTIONAL = ("num_batches_tracked",)  # buffers older torchvision files lack; the net keeps its own


@dataclass(frozen=True)
class PretrainedFit:
    """What :func:`load_pretrained` did: the tensors copied from the file, and the new ones."""

    loaded: tuple[str, ...]
    new: tuple[str, ...]
    why_new: str = ""  # why the classifier is new ("" when every layer was loaded)


def net_name(spec: VGGSpec) -> str:
    """``vgg11_bn width 0.125``: how a config names the net a spec describes."""
    return f"{CANONICAL[spec.config]}{'_bn' if spec.batch_norm else ''} width {spec.width:g}"


def pretrained_spec(spec: VGGSpec, state: dict[str, torch.Tensor], *, head_size_set: bool,
                    fc_features_set: bool) -> VGGSpec:
    """``spec`` with the head size and FC width of the file where the config left them unset."""
    changes = {}
    fc1 = state.get("classifier.0.weight")
    if fc1 is not None and fc1.ndim == 2:
        if not fc_features_set:
            changes["fc_features"] = int(fc1.shape[0])
        head = math.isqrt(int(fc1.shape[1]) // spec.feature_channels)
        if not head_size_set and head >= 1 and head * head * spec.feature_channels == fc1.shape[1]:
            changes["head_size"] = head
    return VGGSpec(**{**spec.to_dict(), **changes}) if changes else spec


def _hint(spec: VGGSpec, state: dict[str, torch.Tensor]) -> str:
    """What to set when the file holds another net than the configured one ("" if unknown or the same)."""
    try:
        theirs = infer_spec(state)
    except ValueError:
        return ""
    if (theirs.config, theirs.batch_norm, theirs.width) == (spec.config, spec.batch_norm, spec.width):
        return ""
    name = f"{CANONICAL[theirs.config]}{'_bn' if theirs.batch_norm else ''}"
    return f"; the file holds a {name} width {theirs.width:g}: set model.name={name} model.width={theirs.width:g}"


def check_fits(spec: VGGSpec, state: dict[str, torch.Tensor], where: str, *, new: tuple[str, ...] = ()) -> None:
    """Every tensor of the net ``spec`` describes, except ``new``, is in ``state`` with its shape,
    and ``state`` holds nothing else; else one CheckpointError line starting with ``where``,
    naming the first layer that does not fit, both shapes and the file's own net."""
    with torch.device("meta"):
        net = {k: v.shape for k, v in VGG(spec).state_dict().items()}
    detail, hint = None, _hint(spec, state)
    for key, shape in net.items():
        got = state.get(key)
        if key in new or (got is None and key.endswith(OPTIONAL)):
            continue
        if got is None:
            detail = f"the file has no {key}, which this run's net needs"
        elif got.shape != shape:
            detail = f"{key} is {list(got.shape)} in the file, {list(shape)} in this run's net"
            if key.startswith(f"{HEAD}.") and not hint:
                hint = "; to fine-tune on other classes, use model.pretrained"
        if detail:
            break
    extra = next((k for k in state if k not in net), None)
    if detail is None and extra is not None:
        detail = f"the file's {extra} has no place in this run's net"
    if detail is not None:
        raise CheckpointError(f"{where}: {detail} ({net_name(spec)}){hint}")


def _new_head(ckpt: Checkpoint, state: dict[str, torch.Tensor], net: dict[str, torch.Size],
              classes: list[str] | None) -> str:
    """Why the classifier is new ("" when the file's fits this run's classes)."""
    weight = state.get(f"{HEAD}.weight")
    if weight is None:
        return f"the file has no {HEAD}"
    want = net[f"{HEAD}.weight"]
    if weight.shape[0] != want[0]:
        return f"{want[0]} classes, the file's head has {weight.shape[0]}"
    if ckpt.classes is not None and classes is not None and ckpt.classes != classes:
        return f"the file's {len(ckpt.classes)} classes are other classes (or in another order) than the data's"
    return ""


def load_pretrained(model: VGG, ckpt: Checkpoint, source: str, *, classes: list[str] | None = None,
                    caffe_bgr: bool = False) -> PretrainedFit:
    """Copy every tensor of ``ckpt`` into ``model`` (its classifier only when the file's classes
    are the data's ``classes``); CheckpointError naming the first layer that does not fit."""
    if ckpt.spec is not None:  # the file's own metadata describes its tensors, or the file is refused
        check_shapes(check_spec(ckpt.spec, ckpt.path), ckpt.weights, ckpt.path)
    state = caffe_bgr_to_rgb(ckpt.weights) if caffe_bgr else ckpt.weights
    with torch.device("meta"):
        net = {k: v.shape for k, v in VGG(model.spec).state_dict().items()}
    why_new = _new_head(ckpt, state, net, classes)
    new = tuple(k for k in net if why_new and k.startswith(f"{HEAD}."))
    check_fits(model.spec, state, f"model.pretrained={source}", new=new)
    loaded = [k for k in net if k not in new and k in state]
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return PretrainedFit(loaded=tuple(loaded), new=new, why_new=why_new)


def describe(fit: PretrainedFit, model: VGG, source: str) -> str:
    """The one log line of a fine-tuning start: which layers were loaded and which are new."""
    layers = sorted({k.rsplit(".", 1)[0] for k in fit.loaded}, key=lambda n: (n.split(".")[0], int(n.split(".")[1])))
    convs = {f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, torch.nn.Conv2d)}
    n_conv = sum(layer in convs for layer in layers)
    n_bn = sum(layer.startswith("features.") and layer not in convs for layer in layers)
    fcs = [layer for layer in layers if layer.startswith("classifier.")]
    loaded = f"{n_conv} conv layers" + (f" (+{n_bn} batch norms)" if n_bn else "") + (f", {', '.join(fcs)}" if fcs
                                                                                     else "")
    if not fit.new:
        return f"model.pretrained={source}: loaded every layer ({loaded}); the classifier is the file's"
    return f"model.pretrained={source}: loaded {loaded}; new: {HEAD} ({fit.why_new})"
