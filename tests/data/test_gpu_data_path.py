"""The GPU data path's CPU side (``verydeep.data.gpu_decode``): the workers' bytes and
geometry, the fallbacks, and the decode-crop-resize arithmetic run with torchvision's
``decode_jpeg`` on the CPU, against the Pillow path (same crop boxes, flips and colour
shifts; pixels within 2 levels of 255, mean difference under 0.05 level, wherever the Pillow
path decodes at full size)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from verydeep.bench.jpeg_files import random_photo
from verydeep.data import DataConfig
from verydeep.data import gpu_decode
from verydeep.data.gpu_decode import EncodedBatch, filter_taps, read_encoded, resample
from verydeep.data.loaders import build_train_loader, sample_rng
from verydeep.data.transforms import train_sample

MAX_LEVELS = 2.0  # largest pixel difference, in levels of 255
MEAN_LEVELS = 0.05  # mean pixel difference

# draft off: Pillow's DCT-domain downscaling (files >= 2S) is a different, equally good
# downscaler the device decoder has no counterpart for; geometry is the same either way.
BASE = dict(scale_min=64, scale_max=96, crop_size=56, workers=0, draft=False)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[tuple[str, int]]:
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(16):
        w, h = int(rng.integers(100, 200)), int(rng.integers(90, 160))
        path = root / f"n{i % 2}" / f"img_{i}.JPEG"
        path.parent.mkdir(exist_ok=True)
        random_photo(np.random.default_rng(i), w, h).save(path, quality=90)
        samples.append((str(path), i % 2))
    return samples


def _odd_files(root: Path) -> dict[str, Path]:
    """Files the device decoder must not take, and a greyscale JPEG it must."""
    photo = random_photo(np.random.default_rng(99), 150, 120)
    files = {name: root / f"{name}.JPEG" for name in ("cmyk", "png", "truncated", "grey")}
    photo.convert("CMYK").save(files["cmyk"], format="JPEG", quality=90)
    photo.save(files["png"], format="PNG")
    photo.save(root / "whole.jpg", format="JPEG", quality=90)
    files["truncated"].write_bytes((root / "whole.jpg").read_bytes()[:-600])
    photo.convert("L").save(files["grey"], format="JPEG", quality=90)
    return files


def _pairs(cfg_kwargs, samples, **loader_kwargs):
    cpu = build_train_loader(DataConfig(**cfg_kwargs), samples, 8, seed=3, **loader_kwargs)
    gpu = build_train_loader(DataConfig(decode="gpu", **cfg_kwargs), samples, 8, seed=3, **loader_kwargs)
    assert gpu.decoder is not None and cpu.decoder is None
    return list(zip(cpu, gpu))


def _levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs() * 255  # normalize: mean_rgb (std 1): one level is 1/255


@pytest.mark.parametrize("transform", ["scale_jitter", "random_resized_crop"])
def test_device_path_matches_the_pillow_path(jpegs, transform):
    pairs = _pairs({**BASE, "train_transform": transform}, jpegs)
    assert len(pairs) == 2
    for (images, labels, bad), (dev_images, dev_labels, dev_bad) in pairs:
        diff = _levels(images, dev_images)
        assert diff.max() <= MAX_LEVELS + 1e-3 and diff.mean() < MEAN_LEVELS
        assert torch.equal(labels, dev_labels) and bad == dev_bad == []


def test_workers_draw_the_pillow_paths_geometry(jpegs):
    """Same generator, same draws: the crop box, flip and colour shift of every sample."""
    cfg = DataConfig(**{**BASE, "draft": True, "scale_max": 128})
    for index, (path, _) in enumerate(jpegs):
        _, shift, params = train_sample(path, cfg, sample_rng(3, 1, index))
        sample = read_encoded(path, cfg, sample_rng(3, 1, index))
        assert sample.box == params.box and sample.flip == params.flip
        np.testing.assert_array_equal(sample.shift, shift)
        assert sample.size == Image.open(path).size


def test_resample_is_pillows_resize_with_a_box():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    for box in [(3.25, 5.5, 70.75, 50.0), (0, 0, 83, 61), (10.0, 2.0, 30.0, 20.0)]:
        want = np.asarray(Image.fromarray(image).resize((24, 24), Image.Resampling.BILINEAR, box=box))
        x_first, x_weights = filter_taps(box[0], box[2], 83, 24)
        y_first, y_weights = filter_taps(box[1], box[3], 61, 24)
        dense = []
        for first, weights, size in ((x_first, x_weights, 83), (y_first, y_weights, 61)):
            m = np.zeros((24, size), np.float32)
            for i in range(24):
                taps = first[i] + np.arange(weights.shape[1])
                keep = taps < size
                m[i, taps[keep]] = weights[i, keep]
            dense.append(torch.from_numpy(m)[None])
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        diff = np.abs(resample(pixels, *dense)[0].permute(1, 2, 0).numpy() - want)
        # Pillow's 22-bit fixed point against float: exact ties (an upscale by 5/6 from whole
        # pixels, on noise) round either way, and two passes can add up to 2 levels
        assert diff.max() <= MAX_LEVELS and diff.mean() < 0.2


def test_odd_files_take_the_cpu_path_and_match_it_exactly(jpegs, tmp_path):
    """CMYK, a PNG named .JPEG and a truncated file are decoded by the worker on the CPU path
    (the truncated one replaced by a drawn sample, as on the CPU path); greyscale goes to the
    device decoder."""
    files = _odd_files(tmp_path)
    cfg = DataConfig(**BASE)
    for name, want_encoded in (("cmyk", False), ("png", False), ("truncated", False), ("grey", True)):
        assert (read_encoded(files[name], cfg, sample_rng(0, 0, 0)) is not None) == want_encoded, name
    samples = [(str(files[n]), 1) for n in ("cmyk", "png", "truncated", "grey")] + jpegs[:4]
    pairs = _pairs(BASE, samples)
    (images, labels, bad), (dev_images, dev_labels, dev_bad) = pairs[0]
    assert torch.equal(labels, dev_labels) and bad == dev_bad == [str(files["truncated"])]
    diff = _levels(images, dev_images)
    assert diff.max() <= MAX_LEVELS + 1e-3
    batch = build_train_loader(DataConfig(decode="gpu", **BASE), samples, 8, seed=3).dataset[(0, 0)]
    assert isinstance(batch, EncodedBatch) and len(batch.decoded_positions) == 3 and len(batch.positions) == 5
    by_position = dict(zip(batch.decoded_positions.tolist(), range(3)))
    for position, (path, _) in enumerate(samples):
        if position in by_position:  # the CPU path's own crop: identical
            assert torch.equal(images[position], dev_images[position])


def test_a_file_the_device_rejects_is_redone_on_the_cpu_path(jpegs, monkeypatch):
    import torchvision.io

    real = torchvision.io.decode_jpeg
    target = Path(jpegs[0][0]).read_bytes()

    def picky(data, **kwargs):
        if isinstance(data, list):
            if any(bytes(d.numpy()) == target for d in data):
                raise RuntimeError("nvjpeg: unsupported")
            return real(data, **kwargs)
        if bytes(data.numpy()) == target:
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    for (images, labels, _), (dev_images, dev_labels, _) in _pairs(BASE, jpegs):
        assert torch.equal(labels, dev_labels)
        assert _levels(images, dev_images).max() <= MAX_LEVELS + 1e-3


def test_without_a_device_decoder_the_cpu_path_serves_and_says_so(jpegs, monkeypatch, caplog):
    monkeypatch.setattr(gpu_decode, "device_decoding_problem", lambda device: "torchvision has no nvJPEG here")
    with caplog.at_level(logging.WARNING):
        loader = build_train_loader(DataConfig(decode="gpu", **BASE), jpegs, 8, seed=3)
    assert loader.decoder is None and not loader.dataset.encoded
    assert "no nvJPEG" in caplog.text and "decode on the CPU" in caplog.text


def test_encoded_batches_cross_worker_processes(jpegs):
    """The encoded batch survives a DataLoader worker (pickled across processes) intact."""
    pairs = _pairs({**BASE, "workers": 1, "persistent_workers": False}, jpegs)
    for (images, labels, _), (dev_images, dev_labels, _) in pairs:
        assert torch.equal(labels, dev_labels) and _levels(images, dev_images).max() <= MAX_LEVELS + 1e-3


def test_same_sized_files_are_resampled_together_in_bounded_groups(tmp_path, monkeypatch):
    samples = []
    for i in range(10):
        path = tmp_path / f"img_{i}.JPEG"
        random_photo(np.random.default_rng(100 + i), 130, 100 if i < 7 else 110).save(path, quality=90)
        samples.append((str(path), i % 3))
    monkeypatch.setattr(gpu_decode, "MAX_GROUP", 3)  # runs of 3, 3, 1 (100 px high) and 3 (110 px)
    for (images, labels, _), (dev_images, dev_labels, _) in _pairs(BASE, samples):
        assert torch.equal(labels, dev_labels)
        assert _levels(images, dev_images).max() <= MAX_LEVELS + 1e-3


# ----------------------------------------------------------------------------- the overlap


class RecordingStream:
    """A stand-in for ``SideStream`` that records what runs where, in which thread."""

    def __init__(self):
        import threading

        self.log, self.local, self.main = [], threading.local(), threading.get_ident()
        self.tokens = 0

    def side(self):
        import contextlib

        @contextlib.contextmanager
        def on_side():
            self.local.on_side = True
            try:
                yield
            finally:
                self.local.on_side = False
        return on_side()

    def before_decode(self):
        assert getattr(self.local, "on_side", False)
        self.log.append("idle-wait")

    def hand_over(self):
        self.tokens += 1
        self.log.append(f"event{self.tokens}")
        return self.tokens

    def receive(self, handover, tensors):
        self.log.append(f"wait{handover}:" + ",".join(str(int(t.flatten()[0])) for t in tensors))


def test_decode_ahead_prepares_the_next_batch_on_the_side_while_this_one_is_used():
    import threading

    stream = RecordingStream()
    started = {k: threading.Event() for k in range(4)}

    def prepare(k):
        assert getattr(stream.local, "on_side", False), "prepared off the side stream"
        assert threading.get_ident() != stream.main, "prepared in the training thread"
        started[k].set()
        stream.log.append(f"prepare{k}")
        return torch.full((2,), k), torch.tensor([10 + k]), []

    out = gpu_decode.decode_ahead(range(3), prepare, stream, uses_decoder=lambda k: k != 1)
    for k in range(3):
        images, labels, _ = next(out)
        assert int(images[0]) == k and int(labels[0]) == 10 + k  # in order
        if k < 2:  # the next one is being prepared while the caller holds this one
            assert started[k + 1].wait(timeout=10)
    assert next(out, None) is None
    # each batch: (idle-wait if decoded) prepare, event; the caller waits on that batch's own event
    log = [e for e in stream.log]
    assert log.index("idle-wait") < log.index("prepare0") < log.index("event1") < log.index("wait1:0,10")
    assert log.count("idle-wait") == 2  # item 1 does not decode
    assert "wait2:1,11" in log and "wait3:2,12" in log
    assert log.index("event2") < log.index("wait2:1,11")


def test_decode_ahead_raises_a_failed_batch_where_it_would_have_come():
    def prepare(k):
        if k == 1:
            raise ValueError("bad batch 1")
        return (torch.tensor([k]),)

    out = gpu_decode.decode_ahead(range(3), prepare, gpu_decode.InlineStream())
    assert int(next(out)[0]) == 0
    with pytest.raises(ValueError, match="bad batch 1"):
        next(out)


def test_bf16_batches_are_the_float32_ones_rounded(jpegs):
    """Where the step autocasts to bf16, the loader hands bf16: what the first convolution
    would have cast the float32 batch to, bit for bit."""
    cfg = DataConfig(**BASE)
    for decode in ("cpu", "gpu"):
        kwargs = dict(seed=3, device="cpu")
        a = next(iter(build_train_loader(replace_decode(cfg, decode), jpegs, 8, **kwargs)))
        b = next(iter(build_train_loader(replace_decode(cfg, decode), jpegs, 8, dtype=torch.bfloat16, **kwargs)))
        assert a[0].dtype == torch.float32 and b[0].dtype == torch.bfloat16
        assert torch.equal(a[0].to(torch.bfloat16), b[0]) and torch.equal(a[1], b[1])


def replace_decode(cfg: DataConfig, decode: str) -> DataConfig:
    from dataclasses import replace

    return replace(cfg, decode=decode)
