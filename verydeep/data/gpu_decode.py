"""The GPU data path (``data.decode: gpu``): workers read bytes and draw geometry, the device decodes.

Sixteen CPU cores decoding ImageNet JPEGs leave little margin over what one GPU trains on,
so here the loader workers only read each file's bytes, parse its header and draw the
sample's choices (S, crop box, flip, colour alphas: :func:`~verydeep.data.transforms.draw_scale`
and :func:`~verydeep.data.transforms.draw_geometry`, the very draws of the CPU path, from the
same seeded generator). The training process then decodes the batch with nvJPEG
(``torchvision.io.decode_jpeg(list, device="cuda")``) and crops, resizes, flips, shifts the
colour and normalizes on the device (:class:`DeviceDecoder`). A sample is therefore the same
sample wherever it was decoded: the same crop box, flip and shift always, and the same pixels
to within a level or two (two JPEG decoders, and floating-point resampling against Pillow's
fixed point; see ``tests/data/test_gpu_data_path.py``) wherever Pillow decodes at full size.
Pillow's draft mode (``data.draft``: a file at least twice S decoded at 1/2, 1/4 or 1/8 size in
the DCT) has no device counterpart: for such files the pixels differ as two good downscalers'
do, the geometry stays the same.

Files the device decoder cannot take go the CPU path (Pillow, in the worker) and join the
batch already cropped: CMYK and other non-RGB/grey JPEGs, PNGs or anything else named
``.JPEG``, files whose last bytes are not a JPEG's end marker (truncated: Pillow decides
whether they are readable, and the CPU path replaces them as it would). A file the device
decoder rejects after all is redone on the CPU path in the training process.

The resize is Pillow's: for each output pixel the antialiased triangle ("bilinear") filter
over the box, its support widened by the downscale factor, weights normalized to sum 1
(:func:`filter_taps`), applied as two matrix products (horizontal pass first, rounded to
whole levels between the passes, as Pillow's 8-bit resampler does).

Streams (:class:`DecodeAhead`, :class:`SideStream`). ``torchvision.io.decode_jpeg(list,
device="cuda")`` allocates its outputs on the caller's current stream and writes them from its
own decoder stream, which does not wait for the caller's stream first (pytorch/vision PR
#9606). Called on the compute stream while a training step is queued there, it can write into
blocks the caching allocator took back from that step's tensors and the step's queued kernels
still read: corrupted images and activations. So the decoding never runs on the compute
stream. A thread decodes batch k+1 while the training step of batch k runs, on a dedicated
side stream that does nothing else: before each decode the thread waits (on the host, off the
training thread) until the side stream is idle, so every block the decoder can be handed is
free of queued work; blocks the compute stream still uses are not handed out, as every tensor
passed to it is ``record_stream``-ed on it. The host-to-device copies and the resampling run on
the side stream too; the compute stream waits on an event recorded after them, so it never
reads a batch before it is complete. ``verydeep.bench.gpu_data_check`` compares the batches
with the CPU path's while training kernels are queued. On a CPU the same code runs in program
order (:class:`InlineStream`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from verydeep.data.config import DataConfig
from verydeep.data.transforms import colour_shift, draw_geometry, draw_scale, normalize_

log = logging.getLogger(__name__)

GPU_DECODABLE_MODES = ("RGB", "L")  # nvJPEG's YCbCr and greyscale; CMYK/YCCK go the CPU path
JPEG_END = b"\xff\xd9"
MAX_GROUP = 64  # images resampled in one matrix product: bounds the float copies' memory


# ----------------------------------------------------------------------------- geometry


def filter_taps(start: float, end: float, in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear resampling weights for the span [start, end) of an axis of ``in_size``
    pixels onto ``out_size`` pixels: (first input pixel of each output pixel int64 [out],
    weights float32 [out, K]), K the widest support; weights past a pixel's support are 0."""
    scale = (end - start) / out_size
    filterscale = max(scale, 1.0)  # downscaling widens the filter (antialiasing)
    support = filterscale  # the triangle's support is 1 input pixel at scale 1
    centre = start + (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)
    last = np.minimum(np.trunc(centre + support + 0.5), in_size).astype(np.int64)
    k = int(math.ceil(support)) * 2 + 1
    taps = first[:, None] + np.arange(k)[None, :]
    weights = np.clip(1.0 - np.abs((taps - centre[:, None] + 0.5) / filterscale), 0.0, None)
    weights[taps >= last[:, None]] = 0.0
    total = weights.sum(axis=1, keepdims=True)
    np.divide(weights, total, out=weights, where=total != 0)
    return first, weights.astype(np.float32)


def _padded(rows: list[np.ndarray], width: int) -> np.ndarray:
    out = np.zeros((len(rows), *rows[0].shape[:-1], width), dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, ..., :r.shape[-1]] = r
    return out


# ----------------------------------------------------------------------------- the worker's side


@dataclass
class EncodedSample:
    """One file as a worker hands it to the device: its bytes and its drawn geometry."""

    data: np.ndarray  # uint8: the file
    size: tuple[int, int]  # stored (width, height), from the header
    box: tuple[float, float, float, float]  # the crop in stored-image coordinates
    flip: bool
    shift: np.ndarray  # float32 [3]: the colour shift in [0, 1] units


def read_encoded(path, cfg: DataConfig, rng: np.random.Generator) -> EncodedSample | None:
    """``path``'s bytes and the sample's choices drawn from ``rng`` (as the CPU path draws
    them); None when the device decoder cannot take the file (see the module doc), in which
    case nothing was drawn from ``rng``."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF / decompression-bomb chatter, as the CPU path
            with Image.open(io.BytesIO(data.tobytes())) as img:
                kind, mode, size = img.format, img.mode, img.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # the CPU path says why (and draws a replacement)
    if kind != "JPEG" or mode not in GPU_DECODABLE_MODES or data[-2:].tobytes() != JPEG_END:
        return None
    scale = draw_scale(rng, cfg)
    params = draw_geometry(rng, cfg, *size, scale)
    return EncodedSample(data, size, params.box, params.flip, colour_shift(cfg, params.alpha))


@dataclass
class EncodedBatch:
    """A training batch as workers hand it over on the GPU data path: JPEG bytes and geometry
    for the device, plus the samples the worker decoded itself (the CPU path's crops)."""

    epoch: int
    data: torch.Tensor  # uint8 [total]: the JPEG files back to back
    offsets: torch.Tensor  # int64 [n + 1]: file j is data[offsets[j]:offsets[j + 1]]
    positions: torch.Tensor  # int64 [n]: each file's place in the batch
    indices: torch.Tensor  # int64 [n]: each file's sample index (to redo it on the CPU path)
    sizes: torch.Tensor  # int64 [n, 2]: stored (width, height)
    flip_mask: torch.Tensor  # bool [B]: flip this position's crop on the device
    x_first: torch.Tensor  # int64 [n, crop]: first source column of each output column
    x_weights: torch.Tensor  # float32 [n, crop, Kx]
    y_first: torch.Tensor  # int64 [n, crop]
    y_weights: torch.Tensor  # float32 [n, crop, Ky]
    decoded: torch.Tensor  # uint8 [m, crop, crop, 3]: crops the worker made (CPU path), flipped
    decoded_positions: torch.Tensor  # int64 [m]
    shifts: torch.Tensor  # float32 [B, 3]
    labels: torch.Tensor  # int64 [B]
    bad: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def pin_memory(self) -> EncodedBatch:
        """Page-locked copies for the DataLoader's pinning thread (the bytes stay pageable:
        the decoder reads them on the host)."""
        pinned = {f.name: getattr(self, f.name).pin_memory() for f in fields(self)
                  if isinstance(getattr(self, f.name), torch.Tensor) and f.name != "data"}
        return replace(self, **pinned)


class EncodedBatchBuilder:
    """Collects one batch's samples, encoded or decoded, each at its position in the batch."""

    def __init__(self, epoch: int, size: int, crop: int) -> None:
        self.epoch, self.crop = epoch, crop
        self.encoded: list[tuple[int, int, EncodedSample]] = []  # (position, sample index, sample)
        self.decoded: list[tuple[int, np.ndarray]] = []
        self.shifts = np.zeros((size, 3), dtype=np.float32)
        self.labels = np.zeros(size, dtype=np.int64)

    def add_encoded(self, position: int, index: int, sample: EncodedSample, label: int) -> None:
        self.encoded.append((position, index, sample))
        self.shifts[position], self.labels[position] = sample.shift, label

    def add_decoded(self, position: int, image: np.ndarray, shift: np.ndarray, label: int) -> None:
        self.decoded.append((position, image))
        self.shifts[position], self.labels[position] = shift, label

    def finish(self, bad: list[str]) -> EncodedBatch:
        self.encoded.sort(key=lambda e: (e[2].size[1], e[2].size[0]))  # same sizes adjacent: one resample each
        crop, samples = self.crop, [s for _, _, s in self.encoded]
        flip_mask = np.zeros(len(self.labels), dtype=bool)
        for position, _, sample in self.encoded:
            flip_mask[position] = sample.flip
        x_taps = [filter_taps(s.box[0], s.box[2], s.size[0], crop) for s in samples]
        y_taps = [filter_taps(s.box[1], s.box[3], s.size[1], crop) for s in samples]
        lengths = [len(s.data) for s in samples]
        return EncodedBatch(
            epoch=self.epoch,
            data=torch.from_numpy(np.concatenate([s.data for s in samples]) if samples else np.zeros(0, np.uint8)),
            offsets=torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int64),
            positions=torch.tensor([p for p, _, _ in self.encoded], dtype=torch.int64),
            indices=torch.tensor([i for _, i, _ in self.encoded], dtype=torch.int64),
            sizes=torch.tensor([s.size for s in samples], dtype=torch.int64).view(-1, 2),
            flip_mask=torch.from_numpy(flip_mask),
            **_taps_tensors("x", x_taps, crop), **_taps_tensors("y", y_taps, crop),
            decoded=torch.from_numpy(np.stack([d for _, d in self.decoded]) if self.decoded
                                     else np.zeros((0, crop, crop, 3), np.uint8)),
            decoded_positions=torch.tensor([p for p, _ in self.decoded], dtype=torch.int64),
            shifts=torch.from_numpy(self.shifts), labels=torch.from_numpy(self.labels), bad=bad)


def _taps_tensors(axis: str, taps: list[tuple[np.ndarray, np.ndarray]], crop: int) -> dict:
    if not taps:
        return {f"{axis}_first": torch.zeros((0, crop), dtype=torch.int64),
                f"{axis}_weights": torch.zeros((0, crop, 1), dtype=torch.float32)}
    width = max(w.shape[1] for _, w in taps)
    return {f"{axis}_first": torch.from_numpy(np.stack([f for f, _ in taps])),
            f"{axis}_weights": torch.from_numpy(_padded([w for _, w in taps], width))}


# ----------------------------------------------------------------------------- the device's side

# (epoch, sample index) -> the CPU path's (uint8 crop [crop, crop, 3] flipped, shift, label)
CpuSample = Callable[[int, int], tuple[np.ndarray, np.ndarray, int]]


class DeviceDecoder:
    """Turns an :class:`EncodedBatch` into the loader's (normalized float32 images
    [B, 3, crop, crop] on ``device``, labels), decoding the JPEGs on ``device``.

    Nothing in here waits for the device: the batch's small tensors go over once each from
    pinned memory (a copy from pageable memory would wait for the queued training step), and
    every later index is a slice (same-sized images are adjacent, the workers sort them so) or
    a device tensor."""

    def __init__(self, crop: int, mean: torch.Tensor, std: torch.Tensor, device: torch.device,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32) -> None:
        self.crop, self.device, self.channels_last, self.dtype = crop, torch.device(device), channels_last, dtype
        # on the device once: no pageable host-to-device copy per batch
        self.mean, self.std = mean.to(self.device), std.to(self.device)

    def __call__(self, batch: EncodedBatch, cpu_sample: CpuSample) -> tuple[torch.Tensor, torch.Tensor]:
        decoded, redone = self._decode(batch, cpu_sample)  # fixes the batch's host tensors first
        on = {name: getattr(batch, name).to(self.device, non_blocking=True)
              for name in ("positions", "flip_mask", "x_first", "x_weights", "y_first", "y_weights", "decoded",
                           "decoded_positions", "shifts", "labels")}
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        images = torch.empty((len(batch), 3, self.crop, self.crop), dtype=torch.float32, device=self.device,
                             memory_format=fmt)
        for start, end, (h, w) in _runs(decoded):
            pixels = torch.stack(decoded[start:end]).float()
            wx = _dense(on["x_first"][start:end], on["x_weights"][start:end], w)
            wy = _dense(on["y_first"][start:end], on["y_weights"][start:end], h)
            images[on["positions"][start:end]] = resample(pixels, wx, wy)
        if len(batch.decoded_positions):
            images[on["decoded_positions"]] = on["decoded"].permute(0, 3, 1, 2).float()
        for position, crop in redone:  # rare: files the device decoder rejected
            images[position] = torch.tensor(crop).to(self.device).permute(2, 0, 1).float()
        images = torch.where(on["flip_mask"].view(-1, 1, 1, 1), images.flip(-1), images)
        images = normalize_(images, on["shifts"], self.mean, self.std)
        return (images if self.dtype == torch.float32 else images.to(self.dtype)), on["labels"]

    def _decode(self, batch: EncodedBatch, cpu_sample: CpuSample) -> tuple[list, list]:
        """The batch's JPEGs on the device ([3, h, w] uint8 each, None where redone on the CPU
        path), and the redone samples as (position, crop); redoing updates the batch's shift,
        label and flip there (a replacement may have been drawn; the CPU crop comes flipped)."""
        offsets = batch.offsets.tolist()
        files = [batch.data[offsets[j]:offsets[j + 1]] for j in range(len(offsets) - 1)]
        if not files:
            return [], []
        try:
            decoded = decode_jpegs(files, self.device)
        except RuntimeError:  # one bad file fails the batch: find it
            decoded = [_decode_one(f, self.device) for f in files]
        redone = []
        for j, ((width, height), image) in enumerate(zip(batch.sizes.tolist(), decoded)):
            if image is not None and tuple(image.shape[1:]) == (height, width):
                continue
            position = int(batch.positions[j])
            crop, shift, label = cpu_sample(batch.epoch, int(batch.indices[j]))
            batch.shifts[position], batch.labels[position] = torch.from_numpy(shift), label
            batch.flip_mask[position] = False
            redone.append((position, crop))
            decoded[j] = None
        return decoded, redone


def _runs(decoded: list) -> list[tuple[int, int, tuple[int, int]]]:
    """(start, end, (h, w)) of each run of adjacent decoded images of one size (None ends a
    run), at most ``MAX_GROUP`` long: the images resampled together."""
    runs, start = [], 0
    for j in range(len(decoded) + 1):
        here = decoded[j] if j < len(decoded) else None
        first = decoded[start] if start < j else None
        if first is not None and (here is None or here.shape != first.shape or j - start == MAX_GROUP):
            runs.append((start, j, tuple(first.shape[1:])))
            start = j
        if here is None:
            start = j + 1
    return runs


def _dense(first: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
    """[g, crop, size] resampling matrices from the compact taps (on their device)."""
    taps = (first[..., None] + torch.arange(weights.shape[-1], device=first.device)).clamp_(max=size - 1)
    dense = torch.zeros((*first.shape, size), dtype=torch.float32, device=first.device)
    return dense.scatter_add_(2, taps, weights)  # add: clamped taps past the edge carry weight 0


def resample(pixels: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
    """Pillow's two-pass resize of ``pixels`` [g, 3, h, w] (0..255) by matrices ``wx``
    [g, out, w] and ``wy`` [g, out, h]: horizontal first, whole levels after each pass."""
    rows = torch.matmul(pixels, wx.transpose(1, 2)[:, None]).round_().clamp_(0, 255)
    return torch.matmul(wy[:, None], rows).round_().clamp_(0, 255)


def decode_jpegs(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchvision's (nvJPEG on CUDA) decode of ``files`` to RGB [3, h, w] uint8 on ``device``.

    EXIF orientation is not applied, as on the Pillow path. torchvision 0.29 deprecates its
    decoders in favour of TorchCodec; the warning is silenced here, and a torchvision without
    them makes :func:`device_decoding_problem` send the run to the CPU path."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(files, mode=ImageReadMode.RGB, device=device)


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpegs([data], device)[0]
    except RuntimeError:
        return None


@functools.lru_cache(maxsize=None)
def device_decoding_problem(device: torch.device) -> str | None:
    """Why ``device`` cannot decode JPEGs through torchvision (no nvJPEG in this build, no
    torchvision, ...), or None when it can: a tiny JPEG is decoded there to find out."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buffer, format="JPEG")
    probe = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    try:
        out = decode_jpegs([probe], device)[0]
    except ImportError as e:
        return f"torchvision.io.decode_jpeg is unavailable ({e})"
    except (RuntimeError, TypeError, ValueError) as e:
        return f"torchvision cannot decode JPEGs on {device} ({str(e).splitlines()[0]})"
    if tuple(out.shape) != (3, 16, 16):
        return f"torchvision decoded a 16x16 JPEG on {device} to shape {tuple(out.shape)}"
    return None


def device_decoder(cfg: DataConfig, device: torch.device, mean: torch.Tensor, std: torch.Tensor,
                   channels_last: bool = False, dtype: torch.dtype = torch.float32) -> DeviceDecoder | None:
    """The decoder ``data.decode: gpu`` asks for, or None (and a warning saying why) when
    ``device`` cannot decode JPEGs: the CPU path then serves the run."""
    device = torch.device(device)
    problem = device_decoding_problem(device)
    if problem:
        log.warning("data.decode=gpu: %s; the loader workers decode on the CPU instead", problem)
        return None
    if device.type != "cuda":
        log.warning("data.decode=gpu on %s: the training process decodes with torchvision's CPU decoder "
                    "(a check of the GPU path's arithmetic; the workers are faster at it)", device)
    return DeviceDecoder(cfg.crop_size, mean, std, device, channels_last, dtype)


# ----------------------------------------------------------------------------- overlap


class InlineStream:
    """A CPU's stand-in for :class:`SideStream`: everything in program order, nothing to wait for."""

    def side(self):
        return contextlib.nullcontext()

    def before_decode(self) -> None:
        pass

    def hand_over(self):
        return None

    def receive(self, handover, tensors: Iterable[torch.Tensor]) -> None:
        pass


class SideStream:
    """A dedicated CUDA stream for the decoding, the copies and the resampling (see the module doc)."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)

    def side(self):
        """Make the side stream current (in the calling thread) on its device."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.cuda.device(self.device))
        stack.enter_context(torch.cuda.stream(self.stream))
        return stack

    def before_decode(self) -> None:
        """Wait until the side stream is idle: the decoder's own stream does not wait for it."""
        self.stream.synchronize()

    def hand_over(self) -> torch.cuda.Event:
        """An event after everything queued on the side stream so far (a batch's last kernel)."""
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def receive(self, handover: torch.cuda.Event, tensors: Iterable[torch.Tensor]) -> None:
        """The compute (current) stream waits for the batch; its tensors stay allocated until
        the compute stream's queued work on them is done."""
        current = torch.cuda.current_stream(self.device)
        current.wait_event(handover)
        for t in tensors:
            if t.is_cuda:
                t.record_stream(current)


def side_stream(device: torch.device) -> InlineStream | SideStream:
    device = torch.device(device)
    return SideStream(device) if device.type == "cuda" else InlineStream()


def decode_ahead(items: Iterable, prepare: Callable[[object], tuple], stream: InlineStream | SideStream,
                 uses_decoder: Callable[[object], bool] = lambda item: True) -> Iterator[tuple]:
    """``prepare(item)`` for each of ``items``, one ahead: a thread fetches and prepares the
    next item on ``stream``'s side stream while the caller uses the current one. ``prepare``
    returns a tuple whose tensors the caller's stream receives (waits for, ``record_stream``);
    ``uses_decoder(item)``: whether ``prepare`` decodes with torchvision (wait for an idle side
    stream first). Items come out in order; an exception in the thread comes out where its item
    would have."""
    source = iter(items)
    done = object()

    def job():
        item = next(source, done)
        if item is done:
            return done, None
        with stream.side():
            if uses_decoder(item):
                stream.before_decode()
            out = prepare(item)
            return out, stream.hand_over()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verydeep-decode") as pool:
        pending = pool.submit(job)
        while True:
            out, handover = pending.result()
            if out is done:
                return
            pending = pool.submit(job)  # the next batch, while the caller trains on this one
            stream.receive(handover, [t for t in out if isinstance(t, torch.Tensor)])
            yield out
