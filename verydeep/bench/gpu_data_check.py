"""Does the GPU data path give the CPU path's samples while training runs, and how fast does the device decode?

    python -m verydeep.bench.gpu_data_check --data DIR [--device cuda] [--json PATH]

Builds the training loader twice over the same JPEG folder (``DIR/train/<class>/``, e.g. the
end-to-end benchmark's generated files), once with ``data.decode: cpu`` (Pillow in the
workers) and once with ``gpu`` (nvJPEG on the device; torchvision's CPU decoder on a CPU).
The GPU path runs as in training: each batch it hands over is trained on at once (``queued``
SGD steps of a VGG on the compute stream, never waited for), so the next batch is decoded on
the side stream while those kernels are still queued, the situation in which a decoder that
ignores stream order corrupts images or activations. Each batch is copied on the compute
stream as it arrives (so the copy is ordered after the hand-over, as the model's reads are)
and compared, after everything, with the CPU path's: labels, and pixel differences in levels
of 255. The check fails (exit 1) on a label mismatch, a non-finite loss, or pixels beyond
resampling tolerance (:data:`MEAN_LEVELS_MAX`, :data:`SHARE_OVER_16_MAX`: two JPEG decoders and
two resamplers differ by a level or two here and there; a corrupted block differs by tens of
levels over thousands of pixels). Then times the device side alone (decode, crop, resize,
flip, normalize of an encoded batch) in images/s. With ``draft`` on Pillow decodes files at
least twice the scale in the DCT at reduced size, which the device decoder has no counterpart
for, so the tolerance applies only with ``--no-draft`` (like for like); with draft on the
differences are reported, not judged.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from verydeep.bench.common import machine_info, resolve_device, synchronize

MEAN_LEVELS_MAX = 1.0  # mean |difference| over all pixels, levels of 255
SHARE_OVER_16_MAX = 0.002  # share of pixels more than 16 levels apart


class QueuedTraining:
    """SGD steps of a VGG on the compute stream, queued and never waited for."""

    def __init__(self, crop: int, device: torch.device, num_classes: int, width: float) -> None:
        from verydeep.models import create_model
        from verydeep.runtime import build_runtime

        self.runtime = build_runtime(device)
        self.model = self.runtime.prepare_model(create_model("vgg16", num_classes=num_classes, width=width,
                                                             head_size=max(1, crop // 32)))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.losses: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, steps: int) -> None:
        for _ in range(steps):
            with self.runtime.autocast():
                loss = F.cross_entropy(self.model(self.runtime.prepare_input(images)).float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.losses.append(loss.detach())

    def nonfinite(self) -> int:
        from verydeep.bench.train_step import count_nonfinite

        return count_nonfinite(self.losses)


def verdict(diff: torch.Tensor, labels_equal: bool, nonfinite: int, draft: bool) -> tuple[bool, str]:
    """(passed, why) for the pixel differences ``diff`` (levels) of the compared batches."""
    mean, over16 = float(diff.mean()), float((diff > 16).float().mean())
    if not labels_equal:
        return False, "labels differ between the GPU and the CPU path"
    if nonfinite:
        return False, f"{nonfinite} non-finite losses while training on the GPU path's batches"
    if draft:
        return True, "draft on: pixel differences reported, not judged (use --no-draft)"
    if mean > MEAN_LEVELS_MAX or over16 > SHARE_OVER_16_MAX:
        return False, (f"pixels beyond resampling tolerance: mean {mean:.3f} levels (max {MEAN_LEVELS_MAX}), "
                       f"{over16:.4%} over 16 levels (max {SHARE_OVER_16_MAX:.2%})")
    return True, "within resampling tolerance"


def check(data_dir: str, device: torch.device, *, batch_size: int = 64, batches: int = 3, scale_min: int = 256,
          scale_max: int = 512, crop: int = 224, draft: bool = True, timed: int = 5, queued: int = 2,
          width: float = 1.0) -> dict:
    from verydeep.data import DataConfig, build_train_loader, discover

    base = dict(root=data_dir, scale_min=scale_min, scale_max=scale_max, crop_size=crop, workers=0, draft=draft,
                index_cache=str(Path(data_dir) / ".index"))
    samples = discover(DataConfig(**base)).train
    cpu = build_train_loader(DataConfig(**base), samples, batch_size, seed=0, device=device)
    gpu = build_train_loader(DataConfig(**base, decode="gpu"), samples, batch_size, seed=0, device=device)
    if gpu.decoder is None:
        return {"device_decoding": False, "passed": True,
                "note": "the device cannot decode JPEGs (see the log): CPU path"}
    train = QueuedTraining(crop, device, num_classes=len({label for _, label in samples}), width=width)
    kept = []
    for images, labels, _ in itertools.islice(gpu, batches):  # decoded on the side while these train
        kept.append((images.clone(), labels.clone()))
        train(images, labels, queued)
    synchronize(device)
    diffs, labels_equal = [], True
    for (a, la, _), (b, lb) in zip(itertools.islice(cpu, batches), kept):
        diffs.append(((a.float().cpu() - b.float().cpu()).abs() * 255))  # normalize mean_rgb: 1 level = 1/255
        labels_equal &= torch.equal(la.cpu(), lb.cpu())
    diff = torch.cat([d.flatten() for d in diffs])
    passed, why = verdict(diff, labels_equal, train.nonfinite(), draft)
    encoded = [gpu.dataset[(0, b)] for b in range(min(timed, len(gpu)))]
    rates = []
    for batch in encoded:
        synchronize(device)
        t0 = time.perf_counter()
        gpu.decoder(batch, lambda epoch, index: gpu.dataset.load(epoch, index, []))
        synchronize(device)
        rates.append(len(batch) / (time.perf_counter() - t0))
    return {"device_decoding": True, "passed": passed, "verdict": why, "labels_equal": labels_equal,
            "batches_compared": len(diffs), "training_steps_queued_per_batch": queued,
            "nonfinite_losses": train.nonfinite(),
            "max_level_difference": float(diff.max()), "mean_level_difference": float(diff.mean()),
            "share_over_2_levels": float((diff > 2.001).float().mean()),
            "share_over_16_levels": float((diff > 16).float().mean()),
            "device_side_images_per_s": statistics.median(rates[1:] or rates),
            "device_side_samples": rates, "draft": draft, "batch_size": batch_size}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, metavar="DIR", help="folder with train/<class>/*.JPEG")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=3, help="batches compared")
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--scale-min", type=int, default=256)
    p.add_argument("--scale-max", type=int, default=512)
    p.add_argument("--queued", type=int, default=2, help="training steps queued on each batch")
    p.add_argument("--width", type=float, help="the queued VGG16's width (default: 1 on CUDA, 1/16 on a CPU)")
    p.add_argument("--no-draft", action="store_true", help="Pillow decodes at full size: like for like")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    width = args.width or (1.0 if device.type == "cuda" else 1 / 16)
    result = check(args.data, device, batch_size=args.batch_size, batches=args.batches,
                   scale_min=args.scale_min, scale_max=args.scale_max, crop=args.crop_size, draft=not args.no_draft,
                   queued=args.queued, width=width)
    result["machine"] = machine_info(device)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if not result["passed"]:
        print(f"gpucheck: FAILED: {result['verdict']}", file=sys.stderr)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
