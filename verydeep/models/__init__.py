"""VGG configurations A, A-LRN, B, C, D, E (optionally with batch norm).

The names below load on first use (PEP 562): ``verydeep.models.config`` and the registry load
without torch, so commands that need no tensors answer at once."""

from __future__ import annotations

from verydeep.lazy_exports import lazy_exports
from verydeep.models.config import DEFAULT_INIT, ModelConfig
from verydeep.models.registry import list_models, resolve

# module -> the names this package exports from it, loaded when first asked for
EXPORTS = {
    "verydeep.models.complexity": ("forward_macs",),
    "verydeep.models.fully_convolutional": ("FullyConvolutionalVGG", "fully_convolutional"),
    "verydeep.models.init": ("init_from_shallower", "initialise", "shallower_mapping"),
    "verydeep.models.vgg": ("VGG", "VGGSpec"),
    "verydeep.models.weights": ("caffe_bgr_to_rgb", "infer_spec"),
}


def create_model(name: str = "vgg16", num_classes: int = 1000, batch_norm: bool | None = None,
                 width: float = 1.0, *, init: str = DEFAULT_INIT, init_std: float = 0.01,
                 **opts):
    """Build a VGG by registry name (``vgg16``, ``vgg19_bn``, ...) or paper letter (``D``).

    ``batch_norm=None`` takes it from the name (``*_bn``). ``opts``: ``dropout`` (0.5),
    ``head_size`` (7; the spatial size FC1 sees, input_size/32), ``fc_features`` (hidden FC
    width, default round(4096 * width)). ``init``: gaussian, glorot/xavier or kaiming.
    """
    from verydeep.models.init import initialise
    from verydeep.models.vgg import VGG, VGGSpec

    config, bn = resolve(name)
    spec = VGGSpec(config=config, batch_norm=bn if batch_norm is None else batch_norm,
                   num_classes=num_classes, width=width, **opts)
    return initialise(VGG(spec), init, std=init_std)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


__getattr__, __dir__ = lazy_exports(__name__, EXPORTS, globals())

__all__ = [
    "VGG", "VGGSpec", "FullyConvolutionalVGG", "create_model", "fully_convolutional",
    "initialise", "init_from_shallower", "shallower_mapping", "list_models",
    "resolve", "infer_spec", "caffe_bgr_to_rgb",
    "count_parameters", "forward_macs", "ModelConfig",
]
