"""The paper recipes' input (Caffe convention): pixels in 0..255 minus the training set's mean
RGB, no std division, colour shift in the same units. Checked against values by hand."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from verydeep.data import DataConfig
from verydeep.data.checked_cache import write_checked_json
from verydeep.data.loaders import normalize_batch
from verydeep.data.stats import compute_stats, resolve_stats
from verydeep.data.transforms import eval_transform, normalization, to_normalized_batch

from .conftest import write_colour_images

MEAN = [0.5, 0.25, 0.75]  # in [0, 1] units, as stats files and configs hold them


def known_image() -> Image.Image:
    # 2 x 2, PNG: lossless, so the pixel values are exactly these
    pixels = np.array([[[255, 0, 10], [20, 30, 40]], [[0, 0, 0], [200, 100, 50]]], dtype=np.uint8)
    return Image.fromarray(pixels)


def test_eval_input_is_pixels_0_255_minus_mean_rgb():
    cfg = DataConfig(normalize="caffe", mean=MEAN)
    x = eval_transform(cfg, scale=2, crop=None)(known_image())
    by_hand = torch.tensor([
        [[255 - 127.5, 20 - 127.5], [0 - 127.5, 200 - 127.5]],
        [[0 - 63.75, 30 - 63.75], [0 - 63.75, 100 - 63.75]],
        [[10 - 191.25, 40 - 191.25], [0 - 191.25, 50 - 191.25]],
    ])
    assert torch.allclose(x, by_hand, atol=1e-4)


def test_colour_shift_is_in_the_same_units():
    cfg = DataConfig(normalize="caffe", mean=MEAN)
    mean, std = normalization(cfg)
    images = torch.tensor(np.asarray(known_image()))[None]  # uint8 NHWC, as workers hand over
    shift = torch.tensor([[0.01, -0.02, 0.0]])  # [0, 1] units: +2.55, -5.1, 0 in pixel units
    x = normalize_batch(images, shift, mean, std)
    assert x[0, 0, 0, 0].item() == pytest.approx(255 + 2.55 - 127.5, abs=1e-4)
    assert x[0, 1, 1, 1].item() == pytest.approx(100 - 5.1 - 63.75, abs=1e-4)
    # the worker-side path computes the same
    y = to_normalized_batch(images.permute(0, 3, 1, 2).numpy(), shift.numpy(), mean, std)
    assert torch.equal(x, y)


def test_caffe_signal_is_255_times_the_0_1_convention():
    img = known_image()
    caffe = eval_transform(DataConfig(normalize="caffe", mean=MEAN), scale=2, crop=None)(img)
    unit = eval_transform(DataConfig(normalize="mean_rgb", mean=MEAN), scale=2, crop=None)(img)
    assert torch.allclose(caffe, 255 * unit, atol=1e-3)


def test_training_set_mean_is_computed_once_cached_and_written_into_the_config(tmp_path):
    paths = write_colour_images(tmp_path)
    cfg = DataConfig(normalize="caffe", stats_file="train", index_cache=str(tmp_path / "cache"))
    resolved = resolve_stats(cfg, paths, progress=False)
    assert resolved.stats_file is None
    assert resolved.mean == pytest.approx([0.5, 0.5, 0.5])  # two of four images have each channel
    assert resolved.mean == pytest.approx(compute_stats(paths, progress=False)["mean"])
    cached = list((tmp_path / "cache").glob("stats-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["mean"] == pytest.approx([0.5] * 3)
    # a second resolution reads the cache: rewrite it (valid, checksum included) and see the
    # rewritten value come back
    stats = json.loads(cached[0].read_text())
    del stats["sha256"]
    stats["mean"] = [0.1, 0.2, 0.3]
    write_checked_json(cached[0], stats)
    assert resolve_stats(cfg, paths, progress=False).mean == pytest.approx([0.1, 0.2, 0.3])


def test_unresolved_training_set_stats_are_refused():
    from verydeep.data.errors import DataError

    with pytest.raises(DataError, match="stats_file=train"):
        normalization(DataConfig(stats_file="train"))
