import pytest
import torch

from verydeep.models import VGG, VGGSpec, fully_convolutional

pytestmark = pytest.mark.usefixtures("no_grad")
CONFIGS = ["A", "A-LRN", "B", "C", "D", "E"]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("bn", [False, True])
def test_dense_form_equals_classifier_at_224(config, bn):
    torch.manual_seed(0)
    model = VGG(VGGSpec(config=config, batch_norm=bn, num_classes=7, width=1 / 8)).eval()
    x = torch.randn(2, 3, 224, 224)
    scores = fully_convolutional(model)(x)
    assert scores.shape == (2, 7, 1, 1)
    torch.testing.assert_close(scores[:, :, 0, 0], model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS)
def test_score_map_sizes(config):
    model = VGG(VGGSpec(config=config, num_classes=3, width=1 / 32, fc_features=8)).eval()
    dense = fully_convolutional(model)
    for q, q2, expected in [(256, 256, (2, 2)), (384, 384, (6, 6)), (512, 512, (10, 10)),
                            (256, 384, (2, 6)), (512, 320, (10, 4))]:
        assert dense(torch.zeros(1, 3, q, q2)).shape[-2:] == expected


def test_dense_form_shares_parameters_and_adds_nothing():
    model = VGG(VGGSpec(config="D", width=1 / 16, head_size=2))
    dense = fully_convolutional(model)
    assert {p.data_ptr() for p in dense.parameters()} == {p.data_ptr() for p in model.parameters()}
    with torch.no_grad():
        model.classifier[6].bias.add_(1.0)  # a change to the model shows in the dense form
    out = dense(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 1000, 1, 1)


def test_dense_form_with_a_small_head_matches_tiny_classifier():
    torch.manual_seed(0)
    model = VGG(VGGSpec(config="B", num_classes=5, width=1 / 8, head_size=2)).eval()
    x = torch.randn(3, 3, 64, 64)
    torch.testing.assert_close(fully_convolutional(model)(x)[..., 0, 0], model(x))
    assert fully_convolutional(model)(torch.zeros(1, 3, 96, 128)).shape[-2:] == (2, 3)


def test_too_small_input_is_refused():
    model = VGG(VGGSpec(config="A", width=1 / 16)).eval()
    with pytest.raises(ValueError, match="too small"):
        fully_convolutional(model)(torch.zeros(1, 3, 128, 128))


def test_caffe_round_up_pooling_keeps_the_border():
    """40 px (not a multiple of 32): PyTorch's pools give 40-20-10-5-2-1, Caffe's 40-20-10-5-3-2."""
    torch.manual_seed(0)
    model = VGG(VGGSpec(config="A", width=1 / 16, fc_features=8, head_size=1, num_classes=3)).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert fully_convolutional(model).forward(x).shape[-2:] == (1, 1)
        ceil = fully_convolutional(model, "ceil")
        assert ceil.forward(x).shape[-2:] == (2, 2)
        # at a multiple of 32 the two agree exactly
        y = torch.randn(1, 3, 64, 64)
        assert torch.equal(ceil(y), fully_convolutional(model)(y))
        # round-up is max-pooling over the input padded at its end with -inf (pools 4 and 5: 5 -> 3 -> 2)
        feats, F = model.features, torch.nn.functional

        def pool_up(t):
            return F.max_pool2d(F.pad(t, (0, t.shape[-1] % 2, 0, t.shape[-2] % 2), value=float("-inf")), 2, 2)

        h = feats[:15](x)  # the fourth pool's input: 5x5
        assert h.shape[-1] == 5
        assert torch.equal(ceil.features(x), pool_up(feats[16:20](pool_up(h))))
    with pytest.raises(ValueError, match="dense pooling"):
        fully_convolutional(model, "round")
