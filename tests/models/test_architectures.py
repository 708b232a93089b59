import pytest
import torch
from torch import nn

from verydeep.models import (
    VGG,
    VGGSpec,
    count_parameters,
    create_model,
    list_models,
    resolve,
)

PAPER_COUNTS = {
    "A": 132_863_336,
    "A-LRN": 132_863_336,
    "B": 133_047_848,
    "C": 133_638_952,
    "D": 138_357_544,
    "E": 143_667_240,
}


@pytest.mark.parametrize("config,expected", PAPER_COUNTS.items())
def test_parameter_counts_match_the_paper(config, expected):
    with torch.device("meta"):
        model = VGG(VGGSpec(config=config))
    assert count_parameters(model) == expected


@pytest.mark.parametrize(
    "name,config,bn",
    [
        ("vgg11", "A", False), ("A", "A", False), ("a-lrn", "A-LRN", False),
        ("vgg11_lrn", "A-LRN", False), ("vgg13_bn", "B", True), ("vgg16_c1", "C", False),
        ("C", "C", False), ("vgg16", "D", False), ("D_bn", "D", True), ("vgg19", "E", False),
        ("VGG19_BN", "E", True),
    ],
)
def test_registry_accepts_letters_and_usual_names(name, config, bn):
    assert resolve(name) == (config, bn)


def test_unknown_name_is_refused_with_the_name():
    with pytest.raises(ValueError, match="vgg17"):
        resolve("vgg17")


def test_every_listed_name_builds():
    for name in list_models():
        model = create_model(name, num_classes=5, width=1 / 16, head_size=1)
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_weight_layer_counts_and_c_has_1x1_convs():
    weight_layers = {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19}
    for config, n in weight_layers.items():
        model = VGG(VGGSpec(config=config, width=1 / 16, head_size=1))
        convs = model.conv_layers()
        assert len(convs) + 3 == n
        ones = [c for c in convs if c.kernel_size == (1, 1)]
        assert len(ones) == (3 if config == "C" else 0)
        assert all(c.padding == (0, 0) for c in ones)
        assert all(c.padding == (1, 1) for c in convs if c.kernel_size == (3, 3))


def test_lrn_only_in_a_lrn_with_the_papers_parameters():
    for config in PAPER_COUNTS:
        lrns = [m for m in VGG(VGGSpec(config=config, width=1 / 16)).modules()
                if isinstance(m, nn.LocalResponseNorm)]
        if config == "A-LRN":
            assert len(lrns) == 1
            (lrn,) = lrns
            assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 2.0)
        else:
            assert lrns == []


def test_lrn_follows_the_first_conv():
    feats = VGG(VGGSpec(config="A-LRN", width=1 / 16)).features
    assert isinstance(feats[0], nn.Conv2d) and isinstance(feats[1], nn.ReLU)
    assert isinstance(feats[2], nn.LocalResponseNorm) and isinstance(feats[3], nn.MaxPool2d)


def test_lrn_is_krizhevskys_formula_with_alpha_on_the_sum():
    """b = a / (2 + 1e-4 * sum of a^2 over the 5 channels around c) ^ 0.75, by hand on 7 channels
    of one pixel holding 10, 20, ..., 70 (torch's own layer divides alpha by 5)."""
    lrn = VGG(VGGSpec(config="A-LRN", width=1 / 16)).features[2]
    x = torch.tensor([10.0, 20, 30, 40, 50, 60, 70]).reshape(1, 7, 1, 1)
    out = lrn(x).flatten()
    # windows clipped at the ends: c=0 sees 10,20,30; c=3 sees 20..60; c=6 sees 50,60,70
    assert out[0].item() == pytest.approx(10 / (2 + 1e-4 * 1400) ** 0.75, rel=1e-5)  # 5.6518
    assert out[3].item() == pytest.approx(40 / (2 + 1e-4 * 9000) ** 0.75, rel=1e-5)  # 17.9995
    assert out[6].item() == pytest.approx(70 / (2 + 1e-4 * 11000) ** 0.75, rel=1e-5)
    assert out[0].item() == pytest.approx(5.6518, abs=1e-4)
    assert out[3].item() == pytest.approx(17.9995, abs=1e-4)
    # torch's layer with the same numbers: 2e-5 per term, a 5x weaker normalization
    torch_lrn = nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x).flatten()
    assert torch_lrn[3].item() == pytest.approx(40 / (2 + 1e-4 / 5 * 9000) ** 0.75, rel=1e-5)
    assert abs(torch_lrn[3].item() - out[3].item()) > 1.0


def test_lrn_has_no_state_dict_keys():
    a = set(VGG(VGGSpec(config="A", width=1 / 16)).state_dict())
    lrn = set(VGG(VGGSpec(config="A-LRN", width=1 / 16)).state_dict())
    # the LRN shifts the later indices by one, and adds no key of its own
    assert len(a) == len(lrn) and not any(k.startswith(("features.2.", "features.3.")) for k in lrn)
    assert "features.4.weight" in lrn


def test_batch_norm_after_every_conv():
    feats = VGG(VGGSpec(config="E", batch_norm=True, width=1 / 16)).features
    mods = list(feats)
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d):
            assert isinstance(mods[i + 1], nn.BatchNorm2d)
            assert isinstance(mods[i + 2], nn.ReLU)


def test_dropout_default_and_head_options():
    model = create_model("vgg16", num_classes=10, width=0.125, head_size=2)
    drops = [m for m in model.classifier if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.5, 0.5]
    assert model.classifier[0].in_features == 64 * 2 * 2
    assert model.classifier[0].out_features == 512
    assert model(torch.zeros(3, 3, 64, 64)).shape == (3, 10)


def test_spec_validation_names_the_value():
    with pytest.raises(ValueError, match="dropout"):
        VGGSpec(dropout=1.5)
    with pytest.raises(ValueError, match="configuration 'F'"):
        VGGSpec(config="F")


def test_reset_classifier():
    model = create_model("A", num_classes=10, width=1 / 16, head_size=1)
    model.reset_classifier(3)
    assert model.spec.num_classes == 3
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
