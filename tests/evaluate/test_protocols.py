import pytest
import torch

from verydeep.evaluate import protocols
from verydeep.evaluate.fusion import average_posteriors, class_permutation
from verydeep.topk import per_class_accuracy, topk_error, topk_hits
from verydeep.models import create_model, fully_convolutional

pytestmark = pytest.mark.usefixtures("no_grad")


def tiny(seed=0, head_size=2, classes=6):
    torch.manual_seed(seed)
    model = create_model("A", num_classes=classes, width=1 / 16, head_size=head_size,
                         fc_features=16, dropout=0.0, init="kaiming").eval()
    # Spread the logits so posteriors are far from uniform and differences show.
    for fc in model.fc_layers:
        torch.nn.init.normal_(fc.weight, std=fc.in_features ** -0.5 * 2)
    return model


def test_dense_on_a_crop_size_image_equals_centre_classifier():
    model = tiny()
    x = torch.randn(3, 3, 64, 64)  # head_size 2: 64 px is this net's "224"
    assert fully_convolutional(model)(x).shape[-2:] == (1, 1)
    for flip in (False, True):
        for average in ("scores", "posteriors"):
            dense = protocols.dense_scores(model, x, flip=flip, average=average)
            torch.testing.assert_close(dense, protocols.center(model, x, flip=flip), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(protocols.center(model, x, flip=False), model(x).softmax(1))


def test_dense_handles_rectangular_images_and_both_averages():
    model = tiny()
    x = torch.randn(2, 3, 96, 160)  # score map 2 x 4
    a = protocols.dense_scores(model, x, flip=False, average="scores")
    b = protocols.dense_scores(model, x, flip=False, average="posteriors")
    smap = fully_convolutional(model)(x)
    assert smap.shape[-2:] == (2, 4)
    torch.testing.assert_close(a, smap.mean((2, 3)).softmax(1))
    torch.testing.assert_close(b, smap.softmax(1).mean((2, 3)))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a.sum(1), torch.ones(2))


def test_dense_pads_images_smaller_than_the_head():
    model = tiny()
    out = protocols.dense_scores(model, torch.randn(1, 3, 40, 80))
    assert out.shape == (1, 6)
    with pytest.raises(ValueError, match="scores.*posteriors"):
        protocols.dense_scores(model, torch.randn(1, 3, 64, 64), average="max")


@pytest.mark.parametrize("method", protocols.METHODS)
def test_flip_averaging_is_symmetric(method):
    model = tiny(1)
    size = 64 if method == "center" else 96  # multicrop: slack 32 per side, an even grid
    x = torch.randn(2, 3, size, size + 32)
    p = protocols.posteriors(method, model, x, crop=64, flip=True)
    q = protocols.posteriors(method, model, x.flip(-1), crop=64, flip=True)
    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # Without flip averaging the two differ: the test above is not vacuous.
    p1 = protocols.posteriors(method, model, x, crop=64, flip=False)
    q1 = protocols.posteriors(method, model, x.flip(-1), crop=64, flip=False)
    assert not torch.allclose(p1, q1, atol=1e-6)


def test_multicrop_is_the_mean_of_its_crops_and_chunking_does_not_matter():
    from verydeep.evaluate.crops import multicrop_grid

    model = tiny(2)
    x = torch.randn(2, 3, 80, 96)
    crops = multicrop_grid(x, 64)
    expected = torch.stack([model(crops[i]).softmax(1).mean(0) for i in range(2)])
    torch.testing.assert_close(protocols.multicrop(model, x, 64), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(protocols.multicrop(model, x, 64, crop_batch=7), expected, rtol=1e-5, atol=1e-6)


def test_protocols_compute_in_the_runtime_they_are_given():
    from verydeep.runtime import build_runtime

    model = tiny(5)
    x = torch.randn(2, 3, 96, 96)
    fp32 = build_runtime("cpu", "none")
    for method in protocols.METHODS:
        default = protocols.posteriors(method, model, x, crop=64)
        assert torch.equal(protocols.posteriors(method, model, x, crop=64, runtime=fp32), default)
        bf16 = protocols.posteriors(method, model, x, crop=64, runtime=build_runtime("cpu", "bf16"))
        assert not torch.equal(bf16, default)
        torch.testing.assert_close(bf16, default, atol=0.05, rtol=0)


def test_fusion_is_the_mean_of_posteriors():
    a, b = tiny(3), tiny(4)
    x = torch.randn(2, 3, 64, 64)
    pa, pb = protocols.center(a, x), protocols.center(b, x)
    fused = average_posteriors([pa, pb])
    torch.testing.assert_close(fused, (pa + pb) / 2)
    torch.testing.assert_close(fused.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="shapes"):
        average_posteriors([pa, pa[:, :3]])


def test_class_permutation_aligns_label_orders():
    assert class_permutation(["a", "b"], ["a", "b"]) is None
    perm = class_permutation(["b", "c", "a"], ["a", "b", "c"])
    scores = torch.tensor([[2, 3, 5]])  # model order b, c, a
    assert scores[:, perm].tolist() == [[5, 2, 3]]
    with pytest.raises(ValueError, match="missing \\['d'\\]"):
        class_permutation(["a", "b"], ["a", "d"], source="net.pt")


def test_topk_error_against_hand_computed_labels():
    scores = torch.tensor([
        [0.10, 0.50, 0.20, 0.05, 0.05, 0.05, 0.05],  # label 1: top-1 right
        [0.40, 0.30, 0.10, 0.08, 0.06, 0.04, 0.02],  # label 2: 3rd -> top-5 right only
        [0.40, 0.30, 0.10, 0.08, 0.06, 0.04, 0.02],  # label 6: 7th -> both wrong
        [0.02, 0.04, 0.06, 0.08, 0.10, 0.30, 0.40],  # label 2: 5th -> top-5 right only
    ])
    labels = torch.tensor([1, 2, 6, 2])
    assert topk_hits(scores, labels).tolist() == [[True, True], [False, True], [False, False], [False, True]]
    assert topk_error(scores, labels, 1) == pytest.approx(75.0)
    assert topk_error(scores, labels, 5) == pytest.approx(25.0)
    # One undecodable image more: counted as wrong, stays in the denominator (5 images).
    assert topk_error(scores, labels, 1, missing=1) == pytest.approx(80.0)
    assert topk_error(scores, labels, 5, missing=1) == pytest.approx(40.0)
    # k above the number of classes: always right.
    assert topk_error(scores[:, :3], torch.tensor([0, 1, 2, 0]), 5) == 0.0


def test_per_class_accuracy():
    correct = torch.tensor([1, 0, 1, 1, 0])
    labels = torch.tensor([0, 0, 1, 1, 2])
    acc, count = per_class_accuracy(correct, labels, 4)
    assert acc[:3].tolist() == [0.5, 1.0, 0.0] and torch.isnan(acc[3])
    assert count.tolist() == [2, 2, 1, 0]


def test_crops_per_pass_caps_a_cpu_pass_by_crop_pixels_only():
    from verydeep.evaluate.protocols import CPU_CROP_PIXELS, crops_per_pass

    assert CPU_CROP_PIXELS == 524288
    assert crops_per_pass(200, 64, torch.device("cpu")) == 128  # 2^19 / 64^2
    assert crops_per_pass(200, 32, torch.device("cpu")) == 200  # under the cap: all of them
    assert crops_per_pass(200, 224, torch.device("cpu")) == 10  # 524288 // 50176
    assert crops_per_pass(200, 64, torch.device("cpu"), crop_batch=7) == 7
    assert crops_per_pass(200, 64, torch.device("cuda")) == 200  # no cap on an accelerator
    assert crops_per_pass(200, 64, torch.device("cuda"), crop_batch=50) == 50
    assert crops_per_pass(3, 1024, torch.device("cpu")) == 1
