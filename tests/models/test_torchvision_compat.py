"""Our VGG and torchvision's share key names, shapes and outputs (both directions)."""

import pytest
import torch
import torchvision

from verydeep.checkpoint import load_model, save_weights
from verydeep.models import create_model

pytestmark = pytest.mark.usefixtures("all_threads", "no_grad")

PAIRS = [("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"), ("vgg19", "E")]


@pytest.fixture(scope="module")
def batch():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("tv_name,letter", PAIRS)
def test_torchvision_weights_into_ours(tv_name, letter, bn, batch):
    tv_name = tv_name + ("_bn" if bn else "")
    torch.manual_seed(1)
    tv = getattr(torchvision.models, tv_name)(weights=None).eval()
    if bn:  # non-trivial running statistics, so a BN key mix-up would show
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours = create_model(letter, batch_norm=bn).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    torch.testing.assert_close(ours(batch), tv(batch), rtol=0, atol=1e-5)


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("tv_name,letter", PAIRS)
def test_our_weights_into_torchvision(tv_name, letter, bn):
    ours = create_model(letter, batch_norm=bn)
    tv = getattr(torchvision.models, tv_name + ("_bn" if bn else ""))(weights=None)
    ours_sd, tv_sd = ours.state_dict(), tv.state_dict()
    assert list(ours_sd) == list(tv_sd)
    assert all(ours_sd[k].shape == tv_sd[k].shape for k in ours_sd)
    tv.load_state_dict(ours_sd, strict=True)
    for k, v in tv.state_dict().items():
        assert torch.equal(v, ours_sd[k]), k


def test_torchvision_file_loads_without_a_name(tmp_path, batch):
    """A plain torchvision state-dict file: configuration, BN and head inferred from keys."""
    tv = torchvision.models.vgg11_bn(weights=None).eval()
    path = tmp_path / "vgg11_bn.pth"
    torch.save(tv.state_dict(), path)
    ours = load_model(path).eval()
    assert (ours.spec.config, ours.spec.batch_norm, ours.spec.num_classes) == ("A", True, 1000)
    torch.testing.assert_close(ours(batch[:1]), tv(batch[:1]), rtol=0, atol=1e-5)
    # and back: our safetensors file loads into torchvision
    save_weights(ours, tmp_path / "w.safetensors")
    from safetensors.torch import load_file

    tv.load_state_dict(load_file(str(tmp_path / "w.safetensors")), strict=True)
