import numpy as np
import pytest
from PIL import Image


def write_tiny_imagenet(root, classes=3, train_per_class=8, val_per_class=3, seed=0):
    """A few small JPEGs per class in class folders (train/ and val/), sizes and aspects varying."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(36, 60)), int(rng.integers(36, 60))
                img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
                img[..., c % 3] += np.uint8(120 + 40 * (c // 3))  # class = dominant channel
                Image.fromarray(img).save(d / f"img_{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory):
    return write_tiny_imagenet(tmp_path_factory.mktemp("tiny_imagenet"))


TINY_OVERRIDES = [
    "model.name=A", "model.width=0.0625", "model.fc_features=32", "model.dropout=0.0",
    "model.init=glorot", "data.scale_min=32", "data.scale_max=40", "data.crop_size=32",
    "data.eval_scale=32", "data.eval_crop=32", "data.workers=0", "data.normalize=mean_std", "optim.lr=0.01",
    "train.batch_size=6", "train.epochs=2", "train.max_iterations=null", "train.log_every=1",
    "train.tensorboard=false", "train.device=cpu",
]
