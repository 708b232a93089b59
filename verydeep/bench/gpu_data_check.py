"""Does the GPU data path give the CPU path's samples, and how fast does the device decode?

    python -m verydeep.bench.gpu_data_check --data-dir DIR [--device cuda] [--json PATH]

Builds the training loader twice over the same JPEG folder (``DIR/train/<class>/``, e.g. the
end-to-end benchmark's generated files), once with ``data.decode: cpu`` (Pillow in the
workers) and once with ``gpu`` (nvJPEG on the device; torchvision's CPU decoder on a CPU), and
compares a few batches: labels, and pixel differences in levels of 255. Then times the device
side alone (decode, crop, resize, flip, normalise of an encoded batch) in images/s. With
``draft`` on (the default) Pillow decodes files at least twice the scale in the DCT at reduced
size, which the device decoder has no counterpart for: the geometry stays the same, the
pixels differ as two downscalers do; ``--no-draft`` compares like for like.
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

from verydeep.bench.common import machine_info, resolve_device, synchronize


def check(data_dir: str, device: torch.device, *, batch_size: int = 64, batches: int = 3, scale_min: int = 256,
          scale_max: int = 512, crop: int = 224, draft: bool = True, timed: int = 5) -> dict:
    from verydeep.data import DataConfig, build_train_loader, discover

    base = dict(root=data_dir, scale_min=scale_min, scale_max=scale_max, crop_size=crop, workers=0, draft=draft,
                index_cache=str(Path(data_dir) / ".index"))
    samples = discover(DataConfig(**base)).train
    cpu = build_train_loader(DataConfig(**base), samples, batch_size, seed=0, device=device)
    gpu = build_train_loader(DataConfig(**base, decode="gpu"), samples, batch_size, seed=0, device=device)
    if gpu.decoder is None:
        return {"device_decoding": False, "note": "the device cannot decode JPEGs (see the log): CPU path"}
    diffs, labels_equal = [], True
    for (a, la, _), (b, lb, _) in itertools.islice(zip(cpu, gpu), batches):
        diffs.append(((a.float() - b.float()).abs() * 255).cpu())  # normalize mean_rgb: 1 level = 1/255
        labels_equal &= torch.equal(la.cpu(), lb.cpu())
    diff = torch.cat([d.flatten() for d in diffs])
    encoded = [gpu.dataset[(0, b)] for b in range(min(timed, len(gpu)))]
    rates = []
    for batch in encoded:
        synchronize(device)
        t0 = time.perf_counter()
        gpu.decoder(batch, lambda epoch, index: gpu.dataset.load(epoch, index, []))
        synchronize(device)
        rates.append(len(batch) / (time.perf_counter() - t0))
    return {"device_decoding": True, "labels_equal": labels_equal, "batches_compared": len(diffs),
            "max_level_difference": float(diff.max()), "mean_level_difference": float(diff.mean()),
            "share_over_2_levels": float((diff > 2.001).float().mean()),
            "device_side_images_per_s": statistics.median(rates[1:] or rates),
            "device_side_samples": rates, "draft": draft, "batch_size": batch_size}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder with train/<class>/*.JPEG")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--scale-min", type=int, default=256)
    p.add_argument("--scale-max", type=int, default=512)
    p.add_argument("--no-draft", action="store_true", help="Pillow decodes at full size: like for like")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    result = check(args.data_dir, device, batch_size=args.batch_size, scale_min=args.scale_min,
                   scale_max=args.scale_max, crop=args.crop, draft=not args.no_draft)
    result["machine"] = machine_info(device)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if not result["device_decoding"] or result["labels_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
