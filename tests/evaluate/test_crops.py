import pytest
import torch

from verydeep.evaluate.crops import center_crop, crop_positions, grid_offsets, multicrop_grid


def test_grid_offsets_corners_and_evenly_spaced():
    # 320-px side, 224 crops: 96 px of slack in four equal steps of 24.
    assert grid_offsets(320, 224) == [0, 24, 48, 72, 96]
    assert grid_offsets(224, 224) == [0, 0, 0, 0, 0]
    assert grid_offsets(64, 32) == [0, 8, 16, 24, 32]
    # Ties round to even: mirror-symmetric (o_i + o_{4-i} = L - C) when L - C is even.
    offs = grid_offsets(258, 224)
    assert offs == [0, 8, 17, 26, 34]
    assert all(a + b == 34 for a, b in zip(offs, reversed(offs)))
    # Smaller than the crop: negative offsets, the crop hangs over a zero border.
    assert grid_offsets(24, 32) == [0, -2, -4, -6, -8]


def test_fifty_crops_per_scale_at_the_documented_positions():
    h, w, c = 48, 64, 32
    img = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w).expand(1, 3, h, w).clone()
    crops = multicrop_grid(img, c)
    assert crops.shape == (1, 50, 3, c, c)
    positions = crop_positions(h, w, c)
    assert len(positions) == 25
    assert positions[0] == (0, 0) and positions[4] == (0, 32) and positions[24] == (16, 32)
    assert positions[12] == (8, 16)  # the centre crop
    for i, (t, l) in enumerate(positions):
        torch.testing.assert_close(crops[0, i], img[0, :, t: t + c, l: l + c])
        torch.testing.assert_close(crops[0, 25 + i], img[0, :, t: t + c, l: l + c].flip(-1))
    # Three scales: 150 crops in all.
    total = sum(multicrop_grid(torch.zeros(1, 3, q, q), c).shape[1] for q in (32, 48, 64))
    assert total == 150


def test_no_flip_gives_25_and_batches_keep_images_apart():
    x = torch.randn(3, 3, 40, 40)
    crops = multicrop_grid(x, 32, flip=False)
    assert crops.shape == (3, 25, 3, 32, 32)
    torch.testing.assert_close(crops[2, 0], x[2, :, :32, :32])


def test_small_image_is_zero_padded():
    img = torch.ones(1, 3, 24, 40)  # shorter side 24 < crop 32
    crops = multicrop_grid(img, 32, flip=False)
    first, last = crops[0, 0], crops[0, 24]
    # Top-left crop: image at the top-left, zeros below row 24.
    assert first[:, :24].eq(1).all() and first[:, 24:].eq(0).all()
    # Bottom-right crop (offset -8 vertically, 8 horizontally): zeros in the first 8 rows.
    assert last[:, :8].eq(0).all() and last[:, 8:].eq(1).all()


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError):
        grid_offsets(0, 224)
    with pytest.raises(ValueError):
        multicrop_grid(torch.zeros(2, 2), 4)


def test_center_crop_is_the_middle_of_the_grid_and_pads_small_images():
    x = torch.randn(2, 3, 48, 64)
    torch.testing.assert_close(center_crop(x, 32), x[..., 8:40, 16:48])
    assert center_crop(x, 48).shape == (2, 3, 48, 48)
    small = center_crop(torch.ones(1, 3, 24, 24), 32)
    assert small[..., 4:28, 4:28].eq(1).all() and small.sum() == 3 * 24 * 24
