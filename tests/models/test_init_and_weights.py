import math
import os
import pickle

import pytest
import torch
from torch import nn

from verydeep.checkpoint import load, load_model, save_weights
from verydeep.models import (
    VGG,
    VGGSpec,
    caffe_bgr_to_rgb,
    create_model,
    init_from_shallower,
    initialise,
)


def _fc1(model):
    return model.classifier[0].weight


def test_gaussian_std_within_5_percent():
    model = create_model("A", width=0.25, init="gaussian", init_std=0.01)
    w = _fc1(model)
    assert w.numel() > 5_000_000
    assert abs(w.std().item() - 0.01) / 0.01 < 0.05
    assert abs(w.mean().item()) < 1e-4
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_gaussian_std_is_an_option():
    w = _fc1(create_model("A", width=0.25, init="gaussian", init_std=0.05))
    assert abs(w.std().item() - 0.05) / 0.05 < 0.05


@pytest.mark.parametrize("scheme", ["glorot", "xavier"])
def test_glorot_std(scheme):
    w = _fc1(create_model("A", width=0.25, init=scheme))
    expected = math.sqrt(2.0 / (w.shape[0] + w.shape[1]))
    assert abs(w.std().item() - expected) / expected < 0.05


def test_kaiming_std_on_a_conv():
    model = create_model("A", width=1.0, init="kaiming")
    conv = model.conv_layers()[-1]  # 512 -> 512, 3x3: 2.4M weights
    expected = math.sqrt(2.0 / (conv.out_channels * 9))
    assert abs(conv.weight.std().item() - expected) / expected < 0.05


def test_unknown_scheme_named():
    with pytest.raises(ValueError, match="'lecun'"):
        initialise(create_model("A", width=1 / 16), "lecun")


def test_from_shallower_copies_exactly_the_promised_tensors():
    torch.manual_seed(0)
    a = VGG(VGGSpec(config="A", num_classes=10, width=1 / 8, head_size=2))
    initialise(a, "gaussian")
    d = VGG(VGGSpec(config="D", num_classes=10, width=1 / 8, head_size=2))
    initialise(d, "glorot")
    before = {k: v.clone() for k, v in d.state_dict().items()}
    copied = init_from_shallower(d, a)
    # A's features: 0 (b1c1), 3 (b2c1), 6 (b3c1), 8 (b3c2); D's: 0, 5, 10, 12
    expected = {"features.0": "features.0", "features.5": "features.3",
                "features.10": "features.6", "features.12": "features.8",
                "classifier.0": "classifier.0", "classifier.3": "classifier.3",
                "classifier.6": "classifier.6"}
    assert len(copied) == 2 * len(expected)
    a_sd, d_sd = a.state_dict(), d.state_dict()
    for tgt, src in expected.items():
        for suffix in ("weight", "bias"):
            assert torch.equal(d_sd[f"{tgt}.{suffix}"], a_sd[f"{src}.{suffix}"])
    touched = {f"{t}.{s}" for t in expected for s in ("weight", "bias")}
    for key, value in d_sd.items():
        if key not in touched:
            assert torch.equal(value, before[key]), f"{key} should not have changed"


def test_from_shallower_refuses_mismatched_shapes():
    a = VGG(VGGSpec(config="A", num_classes=10, width=1 / 8, head_size=2))
    e = VGG(VGGSpec(config="E", num_classes=10, width=1 / 4, head_size=2))
    with pytest.raises(ValueError, match=r"features\.0\.weight.*shapes differ"):
        init_from_shallower(e, a)


def test_from_shallower_refuses_missing_counterpart():
    b = VGG(VGGSpec(config="B", width=1 / 8))
    a = VGG(VGGSpec(config="A", width=1 / 8))
    with pytest.raises(ValueError, match="no counterpart"):
        init_from_shallower(a, b, num_convs=-1)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_roundtrip(tmp_path, suffix):
    model = create_model("C_bn", num_classes=4, width=1 / 16, head_size=1)
    path = save_weights(model, tmp_path / f"net{suffix}", classes=["a", "b", "c", "d"])
    loaded = load_model(path)
    assert loaded.spec == model.spec
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert load(path).classes == ["a", "b", "c", "d"]


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"model": {"features.0.weight": torch.zeros(1)}, "x": _Payload()}, path)
    with pytest.raises(ValueError, match="refused to load"):
        load(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    with open(tmp_path / "evil2.pkl", "wb") as f:
        pickle.dump(_Payload(), f)
    with pytest.raises(ValueError, match="refused"):
        load(tmp_path / "evil2.pkl")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_caffe_bgr_flip():
    torch.manual_seed(0)
    model = create_model("A", num_classes=3, width=1 / 16, head_size=1).eval()
    bgr_state = caffe_bgr_to_rgb(model.state_dict())  # a net that expects BGR input
    bgr_net = create_model("A", num_classes=3, width=1 / 16, head_size=1).eval()
    bgr_net.load_state_dict(bgr_state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bgr_net(x.flip(1)), model(x))


def test_load_model_with_caffe_option(tmp_path):
    model = create_model("A", num_classes=3, width=1 / 16, head_size=1)
    path = save_weights(model, tmp_path / "w.pt")
    flipped = load_model(path, caffe_bgr=True)
    assert torch.equal(flipped.features[0].weight, model.features[0].weight.flip(1))
