"""Loaders: same seed same batches, exact resume, sharding, bad files skipped and counted."""

import pytest
import torch
from .conftest import write_image

from verydeep.data import DataConfig, build_eval_loader, build_train_loader, epoch_permutation


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader_images")
    out = []
    for i in range(26):
        w, h = 30 + (i * 7) % 25, 28 + (i * 5) % 20  # sizes and aspect ratios vary
        out.append((str(write_image(d / f"c{i % 3}" / f"{i}.JPEG", w, h, seed=i)), i % 3))
    return out


def cfg(workers=0, **kw):
    base = dict(scale_min=24, scale_max=40, crop_size=20, workers=workers, persistent_workers=False,
                prefetch_factor=2, colour_shift=0.1)
    base.update(kw)
    return DataConfig(**base)


def epoch_batches(c, samples, bs=4, seed=3, epoch=0, start=0, rank=0, world=1):
    return list(build_train_loader(c, samples, bs, seed=seed, epoch=epoch, start_batch=start, rank=rank,
                                   world_size=world))


def assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya, ba), (xb, yb, bb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and ba == bb


def test_batches_shape_and_len(samples):
    loader = build_train_loader(cfg(), samples, 4, seed=0, epoch=0)
    assert len(loader) == 26 // 4
    batches = list(loader)
    assert len(batches) == 6
    x, y, bad = batches[0]
    assert x.shape == (4, 3, 20, 20) and x.dtype == torch.float32 and y.dtype == torch.int64 and bad == []
    # Labels follow the epoch's permutation: a function of (seed, epoch) only.
    perm = epoch_permutation(0, 0, 26)
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.tensor([samples[i][1] for i in perm[:24]]))


def test_workers_hand_over_uint8_and_normalization_matches_the_cpu_formula(samples):
    """Workers return uint8 NHWC crops; ``normalize_batch`` gives exactly the per-batch formula
    of ``to_normalized_batch``, in either memory format (channels_last is what CUDA runs use)."""
    import numpy as np

    from verydeep.data.loaders import TrainBatches, normalize_batch
    from verydeep.data.transforms import to_normalized_batch

    ds = TrainBatches(cfg(normalize="mean_std"), samples, 4, seed=3, rank=0, world_size=1, raw=True)
    raw, shifts, labels, bad = ds[(0, 1)]
    assert raw.dtype == torch.uint8 and raw.shape == (4, 20, 20, 3) and shifts.shape == (4, 3)
    expected = to_normalized_batch(raw.numpy().transpose(0, 3, 1, 2), shifts.numpy(), ds.mean, ds.std)
    for channels_last in (False, True):
        got = normalize_batch(raw, shifts, ds.mean, ds.std, "cpu", channels_last)
        assert torch.equal(got, expected)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert got.is_contiguous(memory_format=fmt)
    # For CPU training the worker normalizes: the same values through the public API.
    x, y, _ = epoch_batches(cfg(normalize="mean_std"), samples)[1]
    assert torch.equal(x, expected) and torch.equal(y, labels) and not np.isnan(x.numpy()).any()
    ds.raw = False
    x, shifts, _, _ = ds[(0, 1)]
    assert shifts is None and torch.equal(x, expected)
    # The accelerator path (raw batches normalized by the loader's consumer), run on the CPU:
    # the same batches as the CPU path, in both memory formats.
    from verydeep.data.loaders import TrainLoader

    cpu_path = epoch_batches(cfg(normalize="mean_std"), samples)
    for channels_last in (False, True):
        ds.raw = True
        device_path = list(TrainLoader(ds, 0, 0, None, None, "cpu", channels_last))
        assert_same(device_path, cpu_path)


def test_same_seed_same_batches_other_seed_or_epoch_differs(samples):
    a = epoch_batches(cfg(), samples, seed=3)
    assert_same(a, epoch_batches(cfg(), samples, seed=3))
    assert not torch.equal(a[0][0], epoch_batches(cfg(), samples, seed=4)[0][0])
    assert not torch.equal(a[0][0], epoch_batches(cfg(), samples, seed=3, epoch=1)[0][0])


def test_resume_and_workers_give_the_uninterrupted_epoch(samples):
    full = epoch_batches(cfg(), samples, epoch=2)
    assert_same(full[3:], epoch_batches(cfg(), samples, epoch=2, start=3))
    # Two worker processes: same batches, bit for bit, from the start and from a resume point.
    assert_same(full, epoch_batches(cfg(workers=2), samples, epoch=2))
    assert_same(full[4:], epoch_batches(cfg(workers=2), samples, epoch=2, start=4))


def test_persistent_workers_across_epochs(samples):
    """One loader for the run, moved with ``set_epoch``: its workers serve every epoch, and a
    loop that leaves an epoch early (the iteration cap, a signal) does not leak into the next."""
    loader = build_train_loader(cfg(workers=2, persistent_workers=True), samples, 4, seed=3)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        assert_same(epoch_batches(cfg(), samples, epoch=epoch), list(loader))
    loader.set_epoch(0)
    next(iter(loader))
    loader.set_epoch(1, start_batch=2)
    assert_same(epoch_batches(cfg(), samples, epoch=1)[2:], list(loader))
    with pytest.raises(ValueError, match="start_batch 7 outside"):
        loader.set_epoch(0, start_batch=7)


def test_ranks_split_the_single_process_batch(samples):
    # World of 2 x batch 3 = the single-process batch of 6: same samples, same augmentation.
    single = epoch_batches(cfg(), samples, bs=6)
    r0 = epoch_batches(cfg(), samples, bs=3, rank=0, world=2)
    r1 = epoch_batches(cfg(), samples, bs=3, rank=1, world=2)
    assert len(r0) == len(r1) == len(single) == 4
    for (x, y, _), (x0, y0, _), (x1, y1, _) in zip(single, r0, r1):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))


def test_bad_files_are_skipped_and_counted(tmp_path, samples):
    truncated = tmp_path / "truncated.JPEG"
    data = write_image(tmp_path / "ok.JPEG", 60, 60).read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    text = tmp_path / "text.JPEG"
    text.write_text("not an image")
    mixed = samples[:10] + [(str(truncated), 0), (str(text), 1)]
    seen_bad, n = [], 0
    for epoch in range(3):
        for x, y, bad in build_train_loader(cfg(), mixed, 4, seed=1, epoch=epoch):
            assert x.shape == (4, 3, 20, 20) and torch.isfinite(x).all()
            seen_bad.extend(bad)
            n += len(y)
    assert n == 36
    assert seen_bad.count(str(truncated)) >= 3 and seen_bad.count(str(text)) >= 3
    assert set(seen_bad) == {str(truncated), str(text)}


def test_all_bad_fails_clearly(tmp_path):
    text = tmp_path / "text.JPEG"
    text.write_text("nope")
    with pytest.raises(ValueError, match="unreadable images in a row"):
        list(build_train_loader(cfg(max_bad_retries=3), [(str(text), 0)] * 4, 2, seed=0, epoch=0))


# ----------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("world", [1, 3])
def test_eval_sharding_covers_each_image_once(samples, world):
    seen = []
    for rank in range(world):
        for x, y, idx, bad in build_eval_loader(cfg(), samples, 4, scale=24, crop=20, rank=rank, world_size=world):
            assert x.shape[1:] == (3, 20, 20) and len(x) == len(y) == len(idx) and bad == []
            assert y.tolist() == [samples[i][1] for i in idx.tolist()]
            seen.extend(idx.tolist())
    assert sorted(seen) == list(range(26))


def test_eval_centre_crop_values(samples):
    from verydeep.data import eval_transform

    c = cfg(normalize="mean_std")
    x, _, idx, _ = next(iter(build_eval_loader(c, samples, 4, scale=24, crop=20)))
    for row, i in zip(x, idx.tolist()):
        assert torch.equal(row, eval_transform(c, 24, 20)(samples[i][0]))


def test_dense_batches_are_equal_size_without_padding(tmp_path, samples):
    bad = tmp_path / "bad.JPEG"
    bad.write_text("garbage")
    mixed = samples + [(str(bad), 2)]
    seen, shapes, bad_seen = [], set(), []
    for workers in (0, 2):
        seen, bad_seen = [], []
        for x, y, idx, b in build_eval_loader(cfg(workers=workers, index_cache=str(tmp_path / "c")), mixed, 5,
                                              scale=24, crop=None):
            assert len(x) <= 5
            for i in idx.tolist():
                from PIL import Image

                w, h = Image.open(mixed[i][0]).size
                rw, rh = (24, int(24 * h / w)) if w <= h else (int(24 * w / h), 24)
                assert x.shape[2:] == (rh, rw)  # the whole image at Q, no padding
            shapes.add(tuple(x.shape[2:]))
            seen.extend(idx.tolist())
            bad_seen.extend(b)
        assert sorted(seen) == list(range(26))
        assert bad_seen == [(26, str(bad))]
    assert len(shapes) > 3
