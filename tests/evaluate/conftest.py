import numpy as np
import pytest
import torch
from PIL import Image

from verydeep.models import create_model

CLASSES = [f"n{c:08d}" for c in range(3)]


def write_dataset(root, per_class=(3, 2, 2), seed=0, corrupt=0):
    """val/<wnid>/*.JPEG of varying sizes and aspects (class = dominant channel); 7 images by
    default, an odd number; ``corrupt`` extra files that are not images."""
    rng = np.random.default_rng(seed)
    for c, n in enumerate(per_class):
        for split in ("train", "val"):
            d = root / split / CLASSES[c]
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(36, 64)), int(rng.integers(36, 64))
                img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
                img[..., c] += 150
                Image.fromarray(img).save(d / f"img_{i}.JPEG", quality=90)
    for i in range(corrupt):
        (root / "val" / CLASSES[0] / f"broken_{i}.JPEG").write_bytes(b"not a jpeg at all")
    return root


def tiny_net(seed=0, classes=3):
    """A narrow net A for 32-px crops (head_size 1), logits spread so posteriors differ."""
    torch.manual_seed(seed)
    model = create_model("A", num_classes=classes, width=1 / 16, head_size=1, fc_features=16,
                         dropout=0.0, init="kaiming").eval()
    for fc in model.fc_layers:
        torch.nn.init.normal_(fc.weight, std=2 * fc.in_features ** -0.5)
    return model


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("evalset"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convs gain nothing from intra-op threads and lose much to their spin-waits on a
    shared, busy CPU; restored afterwards for the rest of the session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
