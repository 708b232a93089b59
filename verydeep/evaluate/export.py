"""Export a trained net: ONNX (classifier and fully-convolutional forms) and safetensors.

- classifier form: input ``images`` [batch, 3, C, C] at the training crop C (224 for the
  paper), output ``logits`` [batch, classes]; the batch is dynamic.
- dense form: the paper's fully-convolutional net, input ``images`` [batch, 3, height, width]
  with dynamic batch, height and width (each at least 32 * head_size), output ``scores``
  [batch, classes, h, w], the class-score map to average spatially.

Both take images preprocessed as for training (``preprocessing`` in the metadata: RGB in
[0, 1], then the recorded mean/std); the class ids, names and preprocessing are stored in the
ONNX file's metadata (key ``verydeep``) and in the safetensors header.

The exporter is torch.export's (``exporter="dynamo"``, PyTorch's default since 2.9; opset >=
18, needs ``onnxscript``): dynamic batch, and dynamic height and width for the dense form, as
``torch.export.Dim``s. ``exporter="torchscript"`` is the deprecated tracing exporter, kept for
runtimes that need an older opset; its deprecation warning is shown, never silenced, since it
says when the option will stop working. ONNX export needs the ``onnx`` extra
(``pip install 'verydeep[onnx]'``); safetensors needs nothing more.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from verydeep.atomic_write import plain_file_mode
from verydeep.errors import UsageError
from verydeep.evaluate.checkpoints import EvalNet, as_eval_nets
from verydeep.models import fully_convolutional, save_weights

FORMS = ("classifier", "dense")
EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = {"dynamo": 18, "torchscript": 17}
ONNX_EXTRA = "pip install 'verydeep[onnx]'"


def check_onnx_available(exporter: str = "dynamo") -> None:
    """Raise a one-line error naming the extra to install when the ONNX packages are missing."""
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown ONNX exporter {exporter!r}; choose {' or '.join(EXPORTERS)}")
    needed = ("onnx", "onnxscript") if exporter == "dynamo" else ("onnx",)
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"ONNX export needs {' and '.join(missing)}, which are not installed: {ONNX_EXTRA} "
                         "(or export only --format safetensors)")


def export_metadata(net: EvalNet) -> dict:
    return {"spec": net.model.spec.to_dict(), "classes": net.classes, "class_names": net.class_names,
            "preprocessing": net.preprocessing(), "source": net.source}


def export_onnx(net, path: str | Path, *, form: str = "classifier", image_size: int | None = None,
                opset: int | None = None, exporter: str = "dynamo") -> Path:
    """Write ``net`` (an EvalNet, VGG or checkpoint path) as ONNX in the given form, with
    ``exporter`` (see the module docstring) at ``opset`` (default: the exporter's, 18 or 17)."""
    if form not in FORMS:
        raise ValueError(f"unknown export form {form!r}; choose {' or '.join(FORMS)}")
    check_onnx_available(exporter)
    import onnx

    opset = DEFAULT_OPSET[exporter] if opset is None else opset
    if exporter == "dynamo" and opset < DEFAULT_OPSET["dynamo"]:
        raise UsageError(f"the dynamo exporter writes opset >= 18 (asked for {opset}); "
                         "use --exporter torchscript for an older opset")
    (net,) = as_eval_nets(net)
    model = net.model.cpu().float().eval()
    spec = model.spec
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if form == "classifier":
        module, size, out_name = model, image_size or 32 * spec.head_size, "logits"
        dyn_axes = {"images": {0: "batch"}, out_name: {0: "batch"}}
    else:
        module, out_name = fully_convolutional(model).eval(), "scores"
        size = image_size or 32 * (spec.head_size + 1)
        dyn_axes = {"images": {0: "batch", 2: "height", 3: "width"},
                    out_name: {0: "batch", 2: "score_height", 3: "score_width"}}
    example = torch.zeros(2, 3, size, size)
    with torch.no_grad():
        if exporter == "dynamo":
            dims = {0: torch.export.Dim("batch")}
            if form == "dense":
                m = 32 * spec.head_size
                dims.update({2: torch.export.Dim("height", min=m), 3: torch.export.Dim("width", min=m)})
            program = torch.onnx.export(module, (example,), input_names=["images"], output_names=[out_name],
                                        dynamic_shapes=(dims,), dynamo=True, opset_version=opset, verbose=False)
            program.save(str(path))
        else:
            torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=[out_name],
                              dynamic_axes=dyn_axes, opset_version=opset, dynamo=False)
    module.eval()  # the exporter restores the wrapper's mode recursively
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "verydeep", json.dumps({**export_metadata(net), "form": form})
    onnx.save(proto, str(path))
    return path


def export_safetensors(net, path: str | Path) -> Path:
    """Weights + spec + classes + preprocessing in one safetensors file (``load_model`` reads it)."""
    (net,) = as_eval_nets(net)
    meta = export_metadata(net)
    meta.pop("spec")
    path = save_weights(net.model, Path(path), meta=meta)
    os.chmod(path, plain_file_mode())  # safetensors writes 0600; every other file verydeep writes is 0644
    return path
