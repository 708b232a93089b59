"""Decoding of odd files, the paper's transforms: S range and uniformity, crop geometry,
colour shift in the given eigen basis, normalization."""

import json

import numpy as np
import pytest
import torch
from .conftest import write_image
from PIL import Image

from verydeep.data import BadImageError, DataConfig, eval_transform, load_image, normalization, sample_rng
from verydeep.data.decode import original_size
from verydeep.data.transforms import (colour_shift_rgb, eval_geometry, eval_resize, resized_size, sample_scale,
                                      scale_jitter_params, train_sample)


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("mode,fmt,name", [("CMYK", "JPEG", "cmyk.JPEG"), ("L", "JPEG", "gray.JPEG"),
                                           ("RGB", "PNG", "png_disguised.JPEG"), ("RGBA", "PNG", "alpha.JPEG"),
                                           ("P", "PNG", "palette.JPEG")])
def test_odd_files_decode_to_rgb(tmp_path, mode, fmt, name):
    path = write_image(tmp_path / name, 20, 12, mode=mode, fmt=fmt)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (20, 12)
    assert np.asarray(img).shape == (12, 20, 3)


def test_grayscale_channels_equal(tmp_path):
    path = write_image(tmp_path / "g.JPEG", 16, 16, mode="L")
    arr = np.asarray(load_image(path)).astype(int)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_truncated_and_text_files_raise_with_path(tmp_path):
    good = write_image(tmp_path / "good.JPEG", 64, 64)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.JPEG"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "text.JPEG"
    text.write_text("<html>404 not found</html>")
    for path in (truncated, text, tmp_path / "missing.JPEG"):
        with pytest.raises(BadImageError, match=str(path)):
            load_image(path)


def test_draft_decodes_smaller_but_keeps_stored_geometry(tmp_path):
    path = write_image(tmp_path / "big.JPEG", 400, 300)
    img = load_image(path, min_short_side=70)  # 300 / 4 = 75 >= 70: quarter-size decode
    assert img.size == (100, 75)
    assert original_size(img) == (400, 300)
    assert load_image(path, min_short_side=200).size == (400, 300)  # 150 < 200: no reduction


# ----------------------------------------------------------------------------- training scale


def test_scale_within_range_and_uniform():
    cfg = DataConfig(scale_min=10, scale_max=29, crop_size=8)
    draws = np.array([sample_scale(sample_rng(123, 0, i), cfg) for i in range(10000)])
    assert draws.min() == 10 and draws.max() == 29
    counts = np.bincount(draws - 10, minlength=20)
    expected = len(draws) / 20
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 43.82  # chi-square, 19 degrees of freedom, p = 0.001


def test_fixed_scale():
    cfg = DataConfig(scale_min=256, scale_max=256)
    assert {sample_scale(sample_rng(0, 0, i), cfg) for i in range(50)} == {256}


def test_pre_crop_shorter_side_is_s(tmp_path):
    # A real image through the real transform: the rescaled image's shorter side is S, in range,
    # and S over many samples is uniform on [Smin, Smax] (KS statistic against the uniform CDF).
    path = write_image(tmp_path / "img.JPEG", 90, 60)
    cfg = DataConfig(scale_min=32, scale_max=64, crop_size=24, colour_shift=0.0)
    scales = []
    for i in range(600):
        arr, _, p = train_sample(path, cfg, sample_rng(7, 1, i))
        assert arr.shape == (24, 24, 3)
        assert min(p.resized) == p.scale and 32 <= p.scale <= 64
        assert p.resized == (int(p.scale * 90 / 60), p.scale)
        assert 0 <= p.offset[0] <= p.resized[0] - 24 and 0 <= p.offset[1] <= p.resized[1] - 24
        scales.append(p.scale)
    x = np.sort(np.array(scales))
    ecdf = np.arange(1, len(x) + 1) / len(x)
    cdf = (x - 32 + 1) / 33  # discrete uniform on 33 values
    assert np.max(np.abs(ecdf - cdf)) < 1.63 / np.sqrt(len(x))  # KS, alpha = 0.01


def test_crop_equals_rescale_then_crop(tmp_path):
    # The one-step box resize must equal "rescale the whole image to S, then cut the crop"
    # (up to Pillow's fixed-point rounding; on this noise image a crop one pixel off differs by
    # tens of levels).
    path = write_image(tmp_path / "img.JPEG", 70, 50, seed=3)
    cfg = DataConfig(scale_min=40, scale_max=60, crop_size=32, flip=False, colour_shift=0.0, draft=False)
    full = Image.open(path).convert("RGB")
    for i in range(10):
        arr, _, p = train_sample(path, cfg, sample_rng(0, 0, i))
        ref = np.asarray(full.resize(p.resized, Image.Resampling.BILINEAR))
        x0, y0 = p.offset
        diff = np.abs(arr.astype(int) - ref[y0:y0 + 32, x0:x0 + 32].astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.2
        xs = x0 - 1 if x0 > 0 else x0 + 1
        shifted = np.abs(arr.astype(int) - ref[y0:y0 + 32, xs:xs + 32].astype(int))
        assert shifted.mean() > 10


def test_flip_mirrors_the_crop(tmp_path):
    path = write_image(tmp_path / "img.JPEG", 50, 40)
    base = dict(scale_min=40, scale_max=40, crop_size=32, colour_shift=0.0)
    for i in range(20):
        a, _, pa = train_sample(path, DataConfig(**base, flip=True), sample_rng(0, 0, i))
        b, _, pb = train_sample(path, DataConfig(**base, flip=False), sample_rng(0, 0, i))
        assert pa.offset == pb.offset
        assert np.array_equal(a, b[:, ::-1] if pa.flip else b)


def test_colour_shift_uses_given_eigen_basis(tmp_path):
    # A flat grey image: every output pixel is 128/255 + the shift, so the shift can be read off.
    path = tmp_path / "grey.png"
    Image.new("RGB", (40, 40), (128, 128, 128)).save(path)
    eigvec = [[0.0, 1.0, 0.0], [0.6, 0.0, 0.8], [0.8, 0.0, -0.6]]  # columns: an orthonormal basis
    eigval = [0.3, 0.2, 0.05]
    cfg = DataConfig(scale_min=32, scale_max=32, crop_size=32, colour_shift=0.5, pca_eigval=eigval,
                     pca_eigvec=eigvec, normalize="mean_std", mean=[0, 0, 0], std=[1, 1, 1])
    from verydeep.data.loaders import TrainBatches, normalize_batch

    ds = TrainBatches(cfg, [(str(path), 0)] * 4, batch_size=4, seed=5, rank=0, world_size=1, raw=True)
    raw, shifts, _, _ = ds[(0, 0)]
    images = normalize_batch(raw, shifts, ds.mean, ds.std)
    for j, idx in enumerate(ds.indices(0, 0)):
        _, shift, p = train_sample(str(path), cfg, sample_rng(5, 0, int(idx)))
        a = p.alpha
        expected = [sum(eigvec[c][k] * a[k] * eigval[k] for k in range(3)) for c in range(3)]
        assert np.allclose(shift, expected, atol=1e-6)
        got = images[j].mean(dim=(1, 2)).numpy() - 128 / 255
        assert np.allclose(got, expected, atol=1e-5)
        assert np.allclose(images[j].std(dim=(1, 2)).numpy(), 0, atol=1e-6)
    alphas = np.array([train_sample(str(path), cfg, sample_rng(1, 0, i))[2].alpha for i in range(400)])
    assert abs(alphas.std() - 0.5) < 0.05  # alpha ~ N(0, colour_shift)
    assert np.allclose(colour_shift_rgb([1, 0, 0], np.array(eigval), np.array(eigvec)), [0, 0.18, 0.24])


# ----------------------------------------------------------------------------- evaluation


def test_eval_geometry_hand_computed():
    # 40x30 at Q=20: shorter side 30 -> 20, longer 40 -> int(20 * 40 / 30) = 26; a 16 crop
    # starts at round((26 - 16) / 2) = 5, round((20 - 16) / 2) = 2.
    assert eval_geometry(40, 30, 20, 16) == ((26, 20), (5, 2, 21, 18))
    assert eval_geometry(30, 41, 20, 16) == ((20, 27), (2, 6, 18, 22))  # round(5.5) = 6
    assert eval_geometry(40, 30, 20, None) == ((26, 20), None)
    assert resized_size(500, 375, 256) == (341, 256)


def test_eval_crop_matches_torchvision(tmp_path):
    from torchvision import transforms as T

    path = write_image(tmp_path / "img.JPEG", 57, 43, seed=9)
    img = Image.open(path).convert("RGB")
    ours = np.asarray(eval_resize(load_image(path), 32, 24)).astype(int)
    ref = np.asarray(T.Compose([T.Resize(32), T.CenterCrop(24)])(img)).astype(int)
    assert np.abs(ours - ref).max() <= 1
    whole = np.asarray(eval_resize(load_image(path), 32, None))
    assert whole.shape == (32, int(32 * 57 / 43), 3)


def test_eval_transform_normalizes(tmp_path):
    path = tmp_path / "flat.png"
    Image.new("RGB", (50, 40), (255, 0, 51)).save(path)
    cfg = DataConfig(normalize="mean_std", mean=[0.5, 0.5, 0.5], std=[0.5, 0.25, 0.2])
    x = eval_transform(cfg, scale=32, crop=24)(str(path))
    assert x.shape == (3, 24, 24)
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor([1.0, -2.0, -1.5]), atol=1e-5)
    cfg = DataConfig(normalize="mean_rgb", mean=[0.5, 0.5, 0.5])
    x = eval_transform(cfg, scale=32, crop=None)(str(path))
    assert x.shape == (3, 32, 40)
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor([0.5, -0.5, -0.3]), atol=1e-5)


def test_normalization_and_stats_file(tmp_path):
    mean, std = normalization(DataConfig(normalize="mean_rgb"))
    assert torch.equal(std, torch.ones(3))
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5], "pca_eigval": [1, 2, 3],
                                 "pca_eigvec": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}))
    mean, std = normalization(DataConfig(normalize="mean_std", stats_file=str(stats)))
    assert torch.allclose(mean, torch.tensor([0.1, 0.2, 0.3])) and torch.allclose(std, torch.full((3,), 0.5))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="scale_min=200 is smaller than crop_size=224"):
        DataConfig(scale_min=200, scale_max=300)
    with pytest.raises(ValueError, match="normalize='zscore'"):
        DataConfig(normalize="zscore")
    with pytest.raises(ValueError, match="scale_min=300 is larger than scale_max=256"):
        DataConfig(scale_min=300)


def test_scale_jitter_box_maps_back():
    rng = np.random.default_rng(0)
    (rw, rh), (x0, y0), box = scale_jitter_params(rng, 100, 50, 20, 16)
    assert (rw, rh) == (40, 20)
    assert box == pytest.approx((x0 * 2.5, y0 * 2.5, (x0 + 16) * 2.5, (y0 + 16) * 2.5))
