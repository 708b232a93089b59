"""Training and evaluation loaders.

Exact resume and reproducibility: the epoch's permutation is a function of (seed, epoch)
only, and every random choice for a sample (S, crop, flip, colour alphas, replacement of a
bad file) is drawn from a generator seeded by (seed, epoch, sample index, retry) only. A batch
is therefore the same whichever worker builds it and whenever it is built, so
``start_batch=k`` gives batches k, k+1, ... of the uninterrupted epoch, bit for bit, and the
``world_size`` ranks' batches together are the single-process batch of world_size x batch_size.

Each loader item is a whole batch built in one worker (decode, crop, flip, colour shift), so
workers, pinned memory, persistent workers and prefetching are those of
``torch.utils.data.DataLoader``. Who normalizes depends on the device: for CPU training the
workers do (one vectorised pass over the batch); for an accelerator they hand over uint8 NHWC
crops and the colour shifts, and the loader normalizes on the device (:func:`normalize_batch`).

A run builds its training loader once and moves it with ``set_epoch(epoch, start_batch)``,
as ``DistributedSampler.set_epoch``, so persistent workers live as long as the loader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from verydeep.atomic_write import write_text_atomic
from verydeep.data.augment import BatchMix, ImageAugment, batch_mix_enabled, image_augment_enabled
from verydeep.data.config import DataConfig
from verydeep.data.decode import image_size
from verydeep.data.errors import BadImageError, DataError
from verydeep.data.gpu_decode import (DeviceDecoder, EncodedBatch, EncodedBatchBuilder, decode_ahead, device_decoder,
                                      read_encoded, side_stream)
from verydeep.data.index_cache import default_cache_dir
from verydeep.data.transforms import (eval_geometry, load_eval_image, normalization, normalize_, to_normalized_batch,
                                      train_sample)

log = logging.getLogger(__name__)

_PERMUTATION_TAG = 0x5045524D  # keeps the permutation's stream apart from the samples'


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, _PERMUTATION_TAG]).permutation(n)


def sample_rng(seed: int, epoch: int, index: int, retry: int = 0) -> np.random.Generator:
    """The generator of every random choice for sample ``index`` in ``epoch`` (try ``retry``)."""
    return np.random.default_rng([seed, epoch, index, retry])


# ----------------------------------------------------------------------------- training


class TrainBatches(Dataset):
    """Batch ``b`` of ``epoch`` for one rank, as item ``(epoch, b)``; ``encoded``: as the GPU
    data path's :class:`~verydeep.data.gpu_decode.EncodedBatch` (bytes and geometry)."""

    def __init__(self, cfg: DataConfig, samples: Sequence[tuple[str, int]], batch_size: int, seed: int,
                 rank: int, world_size: int, raw: bool = False, encoded: bool = False):
        self.cfg, self.samples, self.batch_size, self.raw, self.encoded = cfg, samples, batch_size, raw, encoded
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.mean, self.std = normalization(cfg)
        self._perm_epoch, self._perm = None, None
        self.augment = ImageAugment(cfg) if image_augment_enabled(cfg) else None  # RandAugment, erasing, ...

    def __len__(self) -> int:
        return len(self.samples) // (self.batch_size * self.world_size)

    def indices(self, epoch: int, b: int) -> np.ndarray:
        """Sample indices of batch ``b``: rank r's slice of global batch b of the permutation."""
        if self._perm_epoch != epoch:
            self._perm, self._perm_epoch = epoch_permutation(self.seed, epoch, len(self.samples)), epoch
        start = (b * self.world_size + self.rank) * self.batch_size
        return self._perm[start:start + self.batch_size]

    def load(self, epoch: int, index: int, bad: list[str]):
        """One sample with its augmentation; an undecodable file is replaced by a random one
        (drawn from the same seeded stream), its path appended to ``bad``."""
        idx = int(index)
        for retry in range(self.cfg.max_bad_retries + 1):
            rng = sample_rng(self.seed, epoch, int(index), retry)
            if retry:
                idx = int(rng.integers(len(self.samples)))
            path, label = self.samples[idx]
            try:
                image, shift, _ = train_sample(path, self.cfg, rng)
                if self.augment is not None:  # its seed drawn after the paper's choices: those stay as they were
                    image = self.augment(image, int(rng.integers(2**62)))
                return image, shift, label
            except BadImageError:
                bad.append(str(path))
        raise DataError(f"{len(bad)} unreadable images in a row while loading sample {index} "
                        f"(last: {bad[-1]}); is the dataset readable? (data.max_bad_retries={self.cfg.max_bad_retries})")

    def __getitem__(self, item):
        """``(images, shifts, labels int64 [B], bad paths)`` as a worker hands them over.

        ``raw`` (training on an accelerator): images uint8 [B, crop, crop, 3] (NHWC) and the
        colour shifts float32 [B, 3], for :func:`normalize_batch` to convert on the device: a
        quarter of the bytes through worker IPC, pinned memory and the host-to-device copy, and
        one pass less per image in the worker. Otherwise (CPU training, where the training
        process has no time to spare) the worker normalizes: images float32 [B, 3, crop, crop],
        shifts None."""
        epoch, b = item
        if self.encoded:
            return self.encoded_batch(epoch, b)
        bad: list[str] = []
        crop = self.cfg.crop_size
        idx = self.indices(epoch, b)
        images = np.empty((len(idx), crop, crop, 3), dtype=np.uint8)
        shifts = np.empty((len(idx), 3), dtype=np.float32)
        labels = []
        for j, i in enumerate(idx):
            images[j], shifts[j], label = self.load(epoch, i, bad)
            labels.append(label)
        images, shifts = torch.from_numpy(images), torch.from_numpy(shifts)
        if not self.raw:
            images, shifts = normalize_batch(images, shifts, self.mean, self.std), None
        return images, shifts, torch.tensor(labels, dtype=torch.int64), bad

    def encoded_batch(self, epoch: int, b: int) -> EncodedBatch:
        """Batch ``b`` for the GPU data path: each file's bytes and the sample's geometry, drawn
        from the generator the CPU path would draw them from; the CPU path's crop for a file
        the device cannot decode (``verydeep.data.gpu_decode``)."""
        bad: list[str] = []
        idx = self.indices(epoch, b)
        batch = EncodedBatchBuilder(epoch, len(idx), self.cfg.crop_size)
        for j, i in enumerate(idx):
            path, label = self.samples[int(i)]
            sample = read_encoded(path, self.cfg, sample_rng(self.seed, epoch, int(i)))
            if sample is None:
                batch.add_decoded(j, *self.load(epoch, i, bad))
            else:
                batch.add_encoded(j, int(i), sample, label)
        return batch.finish(bad)


def normalize_batch(images: torch.Tensor, shifts: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    device: torch.device | str = "cpu", channels_last: bool = False,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 NHWC batch + per-image RGB shifts -> float32 [B, 3, H, W] on ``device``,
    normalized by :func:`~verydeep.data.transforms.normalize_` (the arithmetic of every other
    batch of the project), then cast to ``dtype`` (bf16 for a step that autocasts to bf16: the
    values its first convolution would have cast them to).

    The uint8 batch is copied to the device first; the conversion writes straight into the
    requested memory format (channels_last: NHWC is already that layout, a plain conversion)."""
    device = torch.device(device)
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2)
    if channels_last:
        out = torch.empty(x.shape, dtype=torch.float32, device=device, memory_format=torch.channels_last)
        out.copy_(x)
    else:  # transpose the bytes first: a strided uint8 -> float copy is the slow way round
        out = x.contiguous().float()
    out = normalize_(out, shifts, mean, std)
    return out if dtype == torch.float32 else out.to(dtype)


class _BatchSampler(Sampler):
    """Yields ``(epoch, b)`` for b from ``start``; mutable so persistent workers can be reused."""

    def __init__(self, num_batches: int):
        self.num_batches, self.epoch, self.start = num_batches, 0, 0

    def __iter__(self):
        return iter([(self.epoch, b) for b in range(self.start, self.num_batches)])

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start)


class TrainLoader:
    """Iterable over ``(images, labels, bad)`` batches of one epoch from ``start_batch``;
    ``len()`` is the number of batches it yields (batches_per_epoch - start_batch). Images
    come normalized, ``dtype`` (float32 unless asked), on ``device`` (by the workers for a CPU
    device, on the device otherwise); labels on ``device`` too. On CUDA, and on the GPU data
    path anywhere, batch k+1 is copied, decoded and normalized on a side stream, in a thread,
    while batch k is used (:func:`~verydeep.data.gpu_decode.decode_ahead`). :meth:`set_epoch`
    moves it to another epoch or batch."""

    def __init__(self, dataset: TrainBatches, epoch: int, start_batch: int, loader: DataLoader | None,
                 sampler: _BatchSampler | None, device: torch.device | str = "cpu", channels_last: bool = False,
                 mix: BatchMix | None = None, decoder: DeviceDecoder | None = None,
                 dtype: torch.dtype = torch.float32):
        self.dataset, self.mix, self.decoder, self.dtype = dataset, mix, decoder, dtype
        self.batches_per_epoch = len(dataset)
        self._loader, self._sampler = loader, sampler
        self.device, self.channels_last = torch.device(device), channels_last
        # on the device once: normalizing a batch then copies nothing pageable to it
        self._mean, self._std = dataset.mean.to(self.device), dataset.std.to(self.device)
        self.set_epoch(epoch, start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate ``epoch`` from batch ``start_batch`` on (a resumed run's position in it)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside the epoch's {self.batches_per_epoch} batches")
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def _raw(self):
        """The workers' batches; the DataLoader's iterator is made here, in the calling thread
        (the main one: it installs the worker-failure handler there), even when a decode-ahead
        thread then draws from it."""
        if self._loader is None:
            return (self.dataset[(self.epoch, b)] for b in range(self.start_batch, self.batches_per_epoch))
        self._sampler.epoch, self._sampler.start = self.epoch, self.start_batch
        return iter(self._loader)

    def _on_device(self, item) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """A worker's batch as normalized float32 images and labels on the device."""
        if isinstance(item, EncodedBatch):  # the GPU data path; a file it rejects is redone on the CPU path
            images, labels = self.decoder(item, lambda epoch, index: self.dataset.load(epoch, index, item.bad))
            return images, labels, item.bad
        images, shifts, labels, bad = item
        if shifts is None:  # normalized by the worker
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            images = images if self.dtype == torch.float32 else images.to(self.dtype)
        else:
            images = normalize_batch(images, shifts, self._mean, self._std, self.device, self.channels_last,
                                     self.dtype)
        return images, labels.to(self.device, non_blocking=True), bad

    def _batches(self):
        if self.device.type != "cuda" and self.decoder is None:
            return map(self._on_device, self._raw())  # the workers did it all
        return decode_ahead(self._raw(), self._on_device, side_stream(self.device),
                            uses_decoder=lambda item: isinstance(item, EncodedBatch))

    def __iter__(self):
        for b, (images, labels, bad) in enumerate(self._batches(), self.start_batch):
            if self.mix is not None:  # MixUp / CutMix: labels become class probabilities [B, K]
                images, labels = self.mix(images, labels, seed=self.dataset.seed, epoch=self.epoch, batch=b,
                                          rank=self.dataset.rank)
            yield images, labels, bad


def _as_is(item):
    # Batches are built whole in the workers; keep them exactly as built (tuples stay tuples).
    return item


def build_train_loader(cfg: DataConfig, samples: Sequence[tuple[str, int]], batch_size: int, *, seed: int,
                       epoch: int = 0, start_batch: int = 0, rank: int = 0, world_size: int = 1,
                       device: torch.device | str = "cpu", channels_last: bool = False,
                       num_classes: int | None = None, dtype: torch.dtype = torch.float32) -> TrainLoader:
    """Batches of ``(images float32 [B, 3, crop, crop] normalized, labels int64 [B], bad paths)``
    for ``epoch``, starting at batch ``start_batch`` (later epochs: ``set_epoch``), images and
    labels on ``device`` (workers decode and crop; for an accelerator the conversion to float
    and the normalization run on it, see :func:`normalize_batch`). ``batch_size`` is per
    process; the last incomplete global batch is dropped so every rank has the same number of
    batches. With ``cfg.workers > 0`` and ``cfg.persistent_workers`` the workers are started
    once and serve every epoch. With ``cfg.mixup_alpha`` or ``cfg.cutmix_alpha`` the labels are
    class probabilities [B, ``num_classes``] instead (``verydeep.data.augment``). ``dtype``:
    the images' (bf16 where the step autocasts to bf16; the CPU path's workers hand float32)."""
    device = torch.device(device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    if not samples:
        raise DataError("no training samples")
    decoder = _device_decoder(cfg, device, channels_last, dtype) if cfg.decode == "gpu" else None
    dataset = TrainBatches(cfg, samples, batch_size, seed, rank, world_size, raw=device.type != "cpu",
                           encoded=decoder is not None)
    loader = sampler = None
    workers = loader_workers(cfg.workers)
    if workers > 0:
        sampler = _BatchSampler(len(dataset))
        loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers, collate_fn=_as_is,
                            pin_memory=cfg.pin_memory and device.type == "cuda", prefetch_factor=cfg.prefetch_factor,
                            persistent_workers=cfg.persistent_workers)
    mix = None
    if batch_mix_enabled(cfg):
        if not num_classes:
            raise ValueError("data.mixup_alpha / data.cutmix_alpha need the number of classes (num_classes)")
        mix = BatchMix(cfg, num_classes)
    return TrainLoader(dataset, epoch, start_batch, loader, sampler, device, channels_last, mix, decoder, dtype)


def _device_decoder(cfg: DataConfig, device: torch.device, channels_last: bool,
                    dtype: torch.dtype = torch.float32) -> DeviceDecoder | None:
    """``data.decode: gpu``'s decoder, or None where the CPU path must serve (said in the log)."""
    if image_augment_enabled(cfg):  # RandAugment & co. work on the worker's decoded crops
        log.warning("data.decode=gpu: data.auto_augment / data.random_erasing run in the loader workers on "
                    "decoded images; the workers decode on the CPU")
        return None
    mean, std = normalization(cfg)
    return device_decoder(cfg, device, mean, std, channels_last, dtype)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def loader_workers(requested: int | None) -> int:
    """``data.workers``; None: the cores available per training process (the node's
    ``LOCAL_WORLD_SIZE`` processes share them), less one for the process itself, at least 1."""
    if requested is not None:
        return requested
    per_process = available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, per_process - 1)


# ----------------------------------------------------------------------------- evaluation


def image_sizes(paths: Sequence[str], cache_dir=None, progress: bool = True) -> list[tuple[int, int] | None]:
    """(width, height) of each image from its header (None if unreadable), cached on disk."""
    from verydeep.progress import progress_bar

    dirs = sorted({os.path.dirname(p) for p in paths})
    stamp = [os.stat(d).st_mtime_ns if os.path.isdir(d) else 0 for d in dirs]
    key = hashlib.sha1(("\n".join(paths) + json.dumps(stamp)).encode()).hexdigest()[:20]
    cache_file = Path(cache_dir or default_cache_dir()) / f"sizes-{key}.json"
    try:
        sizes = json.loads(cache_file.read_text())
        if len(sizes) == len(paths):
            return [tuple(s) if s else None for s in sizes]
    except (OSError, ValueError):
        pass
    it = progress_bar(paths, desc="reading image sizes", unit="img", leave=False,
                      disable=not progress or len(paths) < 2000)
    sizes = [image_size(p) for p in it]
    try:
        write_text_atomic(cache_file, json.dumps(sizes))
    except OSError:
        pass
    return sizes


class EvalBatches(Dataset):
    """Item k: (images, labels, indices, bad) of the k-th planned batch."""

    def __init__(self, cfg: DataConfig, samples, batches: list[list[int]], scale: int, crop: int | None):
        self.cfg, self.samples, self.batches, self.scale, self.crop = cfg, samples, batches, scale, crop
        self.mean, self.std = normalization(cfg)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k):
        arrays, labels, indices, bad = [], [], [], []
        for i in self.batches[k]:
            path, label = self.samples[i]
            try:
                arr = load_eval_image(path, self.scale, self.crop, self.cfg.draft)
            except BadImageError:
                bad.append((i, str(path)))
                continue
            if arrays and arr.shape != arrays[0].shape:  # header size lied (e.g. EXIF-free rotate)
                bad.append((i, str(path)))
                log.warning("%s: decoded size differs from its header; counted as unreadable", path)
                continue
            arrays.append(arr)
            labels.append(label)
            indices.append(i)
        if arrays:
            images = to_normalized_batch(np.stack(arrays).transpose(0, 3, 1, 2), np.zeros((len(arrays), 3), np.float32), self.mean, self.std)
        else:
            images = torch.empty((0, 3, self.crop or 0, self.crop or 0), dtype=torch.float32)
        return images, torch.tensor(labels, dtype=torch.int64), torch.tensor(indices, dtype=torch.int64), bad


class EvalLoader:
    def __init__(self, dataset: EvalBatches, loader: DataLoader | None):
        self.dataset, self._loader = dataset, loader

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        if self._loader is None:
            for k in range(len(self.dataset)):
                yield self.dataset[k]
        else:
            yield from self._loader


def plan_eval_batches(cfg: DataConfig, samples, batch_size: int, scale: int, crop: int | None,
                      rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """This rank's sample indices (every ``world_size``-th from ``rank``: each image exactly
    once over the ranks) in batches; for whole images (``crop=None``) grouped by rescaled size
    so a batch needs no padding."""
    shard = list(range(rank, len(samples), world_size))
    if crop is not None:
        return [shard[i:i + batch_size] for i in range(0, len(shard), batch_size)]
    sizes = image_sizes([samples[i][0] for i in shard], cfg.index_cache)
    groups: dict = defaultdict(list)
    for i, size in zip(shard, sizes):
        groups[eval_geometry(*size, scale, None)[0] if size else (0, 0)].append(i)
    batches = []
    for key in sorted(groups):
        g = groups[key]
        batches.extend(g[j:j + batch_size] for j in range(0, len(g), batch_size))
    return batches


def build_eval_loader(cfg: DataConfig, samples: Sequence[tuple[str, int]], batch_size: int, *, scale: int,
                      crop: int | None, rank: int = 0, world_size: int = 1) -> EvalLoader:
    """Batches of ``(images, labels, indices, bad)`` at test scale Q=``scale``: centre
    ``crop`` x ``crop`` crops, or (``crop=None``) whole rescaled images batched by equal size.
    ``indices`` index ``samples``; ``bad`` lists ``(index, path)`` of undecodable images."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    if crop is not None and crop > scale:
        raise ValueError(f"crop {crop} is larger than the test scale Q={scale}")
    batches = plan_eval_batches(cfg, samples, batch_size, scale, crop, rank, world_size)
    dataset = EvalBatches(cfg, samples, batches, scale, crop)
    workers = loader_workers(cfg.workers)
    if workers == 0 or not batches:
        return EvalLoader(dataset, None)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=min(workers, len(batches)),
                        collate_fn=_as_is,
                        prefetch_factor=cfg.prefetch_factor, pin_memory=False)
    return EvalLoader(dataset, loader)
