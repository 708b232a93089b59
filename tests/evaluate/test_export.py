import json
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from verydeep.checkpoint import load, load_model
from verydeep.evaluate.checkpoints import EvalNet
from verydeep.evaluate.export import export_onnx, export_safetensors
from verydeep.models import create_model, fully_convolutional

pytestmark = pytest.mark.usefixtures("no_grad")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = create_model("A", num_classes=5, width=1 / 16, head_size=2, fc_features=16, dropout=0.5).eval()
    for fc in model.fc_layers:
        torch.nn.init.normal_(fc.weight, std=2 * fc.in_features ** -0.5)
    data = SimpleNamespace(normalize="mean_std", mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25],
                           crop_size=64, scale_min=64, scale_max=128)
    return EvalNet(model=model, data=data, classes=[f"n{i:08d}" for i in range(5)],
                   class_names={"n00000003": "three"}, source="tiny")


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]


def test_onnx_classifier_matches_pytorch(net, tmp_path):
    path = export_onnx(net, tmp_path / "c.onnx", form="classifier")
    assert not net.model.training  # export leaves the net in eval mode (dropout off)
    x = torch.randn(3, 3, 64, 64)
    np.testing.assert_allclose(_run(path, x), net.model(x).numpy(), rtol=1e-4, atol=1e-5)
    meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["verydeep"])
    assert meta["form"] == "classifier" and meta["classes"][3] == "n00000003"
    assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and meta["spec"]["head_size"] == 2


def test_onnx_dense_form_has_dynamic_height_and_width(net, tmp_path):
    path = export_onnx(net, tmp_path / "d.onnx", form="dense")
    dense = fully_convolutional(net.model).eval()
    for h, w in ((64, 64), (96, 160)):
        x = torch.randn(2, 3, h, w)
        out = _run(path, x)
        assert out.shape == (2, 5, h // 32 - 1, w // 32 - 1)
        np.testing.assert_allclose(out, dense(x).numpy(), rtol=1e-4, atol=1e-5)


def test_safetensors_round_trip_keeps_classes_and_preprocessing(net, tmp_path):

    path = export_safetensors(net, tmp_path / "w.safetensors")
    saved = load(path)
    assert saved.classes == net.classes and saved.class_names == {"n00000003": "three"}
    assert saved.preprocessing["crop_size"] == 64
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(load_model(path).eval()(x), net.model(x))


def test_bad_form_is_rejected(net, tmp_path):
    with pytest.raises(ValueError, match="classifier or dense"):
        export_onnx(net, tmp_path / "x.onnx", form="pyramid")


def test_the_torchscript_exporter_says_it_is_deprecated(net, tmp_path):
    """The old exporter stays available (older opsets) and its deprecation warning is not silenced."""
    with pytest.warns(DeprecationWarning, match="TorchScript"):
        path = export_onnx(net, tmp_path / "t.onnx", form="dense", exporter="torchscript")
    x = torch.randn(1, 3, 96, 64)
    np.testing.assert_allclose(_run(path, x), fully_convolutional(net.model).eval()(x).numpy(), rtol=1e-4, atol=1e-5)
    assert onnx.load(str(path)).opset_import[0].version == 17
    with pytest.raises(ValueError, match="opset >= 18"):
        export_onnx(net, tmp_path / "d.onnx", opset=17)
