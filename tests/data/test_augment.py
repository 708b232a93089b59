"""The v2 augmentations: they change the images, MixUp/CutMix keep images and labels
consistent, every draw is reproducible, and soft labels train in the data-parallel step."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.data.conftest import WNIDS, write_class_folders
from verydeep.data import DataConfig, build_train_loader, discover
from verydeep.data.augment import BatchMix, ImageAugment


def crop(seed=0, size=32):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_auto_augment_changes_images_reproducibly(policy):
    aug = ImageAugment(DataConfig(auto_augment=policy, randaugment_magnitude=15))
    image = crop()
    outs = [aug(image, seed) for seed in range(8)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, image) for o in outs) >= 4  # some draws are the identity op
    assert np.array_equal(aug(image, 3), outs[3])  # the seed fixes every choice
    assert np.array_equal(image, crop())  # the input is left alone


def test_random_erasing_fills_a_rectangle_with_the_mean_colour():
    cfg = DataConfig(random_erasing=1.0, mean=[0.5, 0.25, 0.75])
    image = crop(1, 48)
    out = ImageAugment(cfg)(image, 0)
    changed = np.any(out != image, axis=2)
    rows, cols = np.nonzero(changed)
    assert changed.sum() > 0
    box = out[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert np.all(box == [128, 64, 191])  # round(255 * mean): 0 once normalized


def one_hot(labels, k):
    return F.one_hot(labels, k).float()


def test_mixup_mixes_images_and_labels_with_the_same_weight():
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    mixed, soft = BatchMix(DataConfig(mixup_alpha=0.4), 5)(images, labels, seed=0, epoch=0, batch=0, rank=0)
    assert soft.shape == (6, 5) and torch.allclose(soft.sum(1), torch.ones(6))
    # image i = lam * x_i + (1 - lam) * x_{i-1}; label i = lam * y_i + (1 - lam) * y_{i-1}
    lam = (mixed[0] - images[-1]).flatten() @ (images[0] - images[-1]).flatten() / (images[0] - images[-1]).pow(2).sum()
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(soft, lam * one_hot(labels, 5) + (1 - lam) * one_hot(labels.roll(1, 0), 5),
                               atol=1e-5, rtol=1e-5)
    assert 0 < lam < 1 and not torch.equal(mixed, images)


def test_cutmix_label_weights_are_the_pasted_area():
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 1])
    for batch in range(6):
        mixed, soft = BatchMix(DataConfig(cutmix_alpha=1.0), 3)(images, labels, seed=1, epoch=2, batch=batch,
                                                                  rank=0)
        kept = (mixed == images).all(dim=1).float().mean(dim=(1, 2))  # share of each image left in place
        pasted = (mixed == images.roll(1, 0)).all(dim=1).float().mean(dim=(1, 2))
        assert torch.allclose(kept + pasted, torch.ones(4))
        expected = kept[:, None] * one_hot(labels, 3) + pasted[:, None] * one_hot(labels.roll(1, 0), 3)
        torch.testing.assert_close(soft, expected, atol=1e-6, rtol=0)


def test_batch_mix_draws_depend_on_the_batch_only():
    mix = BatchMix(DataConfig(mixup_alpha=0.2, cutmix_alpha=1.0), 4)
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    a = mix(images, labels, seed=0, epoch=1, batch=5, rank=0)
    torch.manual_seed(123)  # whatever the global generator holds
    b = mix(images, labels, seed=0, epoch=1, batch=5, rank=0)
    c = mix(images, labels, seed=0, epoch=1, batch=6, rank=0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


def test_the_training_loader_applies_them_and_resumes_exactly(tmp_path):
    root = tmp_path / "ds"
    write_class_folders(root / "train", WNIDS, per_class=4)
    write_class_folders(root / "val", WNIDS, per_class=1)
    plain = DataConfig(root=str(root), workers=0, scale_min=32, scale_max=40, crop_size=32,
                       index_cache=str(tmp_path / "cache"))
    modern = DataConfig(**{**vars(plain), "auto_augment": "trivialaugment", "random_erasing": 0.5,
                           "mixup_alpha": 0.2, "cutmix_alpha": 1.0})
    splits = discover(plain)

    def batches(cfg, start=0):
        loader = build_train_loader(cfg, splits.train, 4, seed=0, num_classes=3)
        loader.set_epoch(1, start_batch=start)
        return list(loader)

    before, after = batches(plain), batches(modern)
    assert after[0][1].shape == (4, 3) and before[0][1].dtype == torch.int64
    assert all(not torch.equal(a[0], b[0]) for a, b in zip(before, after))
    # the batches a resumed run sees are those of the uninterrupted one
    for a, b in zip(after[1:], batches(modern, start=1)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="num_classes"):
        build_train_loader(modern, splits.train, 4, seed=0)


def test_soft_labels_train_through_the_data_parallel_step():
    """F.cross_entropy with class probabilities, split into accumulation micro-batches as usual."""
    from verydeep.models import create_model
    from verydeep.parallel.config import ParallelConfig
    from verydeep.parallel.distributed import DistInfo
    from verydeep.parallel.strategy import build_strategy
    from verydeep.train.loss import classification_loss

    torch.manual_seed(0)
    model = create_model("A", num_classes=5, width=1 / 16, head_size=1, dropout=0.0).double()
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    soft = torch.softmax(torch.randn(8, 5, dtype=torch.float64), 1)
    grads = []
    for accum in (1, 4):
        strategy = build_strategy(model, ParallelConfig(), DistInfo(), crop_size=32, accum=accum)
        model.zero_grad()
        loss = strategy.forward_backward(x, soft, classification_loss())
        grads.append([p.grad.clone() for p in model.parameters()])
        torch.testing.assert_close(loss, F.cross_entropy(model(x), soft).detach())
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
