"""Evaluation throughput of the paper's protocols on synthetic images: images/s per protocol and Q.

Ours: ``verydeep.evaluate.protocols`` as the evaluator calls them (centre crop of the training
size, dense over the whole image rescaled to Q, the 5x5 grid x flips of multi-crop), with
the runtime policy's precision and memory format (bf16 on CUDA; channels_last on CUDA and CPU). Every image
also sees its flip, as in the paper. Images are 4:3 (ImageNet's typical 500x375) with the
shorter side Q; an image counts once however many crops it takes.

Reference, per protocol, the same arithmetic written the plain way on torchvision's VGG:
NCHW, autocast where ours uses it, crops cut image by image in a Python loop; dense as
``features`` followed by the FC weights applied as convolutions.
"""

from __future__ import annotations

import gc
import statistics
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from verydeep.bench.common import (
    BenchResult,
    forward_macs,
    inference_tflops,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
    time_steps,
)
from verydeep.data.config import check_image_side
from verydeep.evaluate.scales import check_scales

METHODS = ("center", "dense", "multicrop")  # single-pass evaluation methods (verydeep.evaluate.protocols)


@dataclass
class EvalBenchConfig:
    model: str = "vgg16"
    width: float = 1 / 16
    crop_size: int = 64  # the training crop (224 for the paper's nets)
    scales: str = "64,96,128"  # Q, comma-separated (256,384,512 for the paper)
    protocols: str = "center,dense,multicrop"
    batch_size: int = 4  # images per call (multi-crop runs 50x that many crops)
    crop_batch: int | None = None  # multi-crop: crops per forward pass (None: all of the batch)
    num_classes: int = 1000
    steps: int = 3
    warmup: int = 1
    repeats: int = 3
    device: str = "auto"
    reference: bool = True
    aspect: float = 4 / 3  # width / height; the shorter side is Q
    seed: int = 0
    min_seconds: float = 0.0  # each timed window lasts at least this long

    def __post_init__(self) -> None:
        check_image_side(self.crop_size, "crop_size")
        check_scales(_scales(self.scales))

    @classmethod
    def for_gpu(cls, **overrides) -> "EvalBenchConfig":
        return replace(cls(width=1.0, crop_size=224, scales="256,384,512", batch_size=32, crop_batch=400,
                           steps=10, warmup=3, repeats=2, device="cuda", min_seconds=2.0), **overrides)


def _scales(text: str) -> list[int]:
    return [int(q) for q in str(text).split(",") if q.strip()]


def dense_macs(model, height: int, width: int) -> int:
    """MACs of the fully-convolutional net on one H x W image (the FC head as convolutions)."""
    feats = forward_macs(model.features, (height, width))
    with torch.no_grad():
        p = next(model.parameters())
        fmap = model.features(torch.zeros(1, 3, height, width, device=p.device, dtype=p.dtype)).shape[-2:]
    k = model.spec.head_size
    locations = max(0, fmap[0] - k + 1) * max(0, fmap[1] - k + 1)
    fc1, fc2, fc3 = model.fc_layers
    head = sum(fc.in_features * fc.out_features for fc in (fc1, fc2, fc3))
    return feats + locations * head


# --- the reference, written the plain way ----------------------------------------------------

def _ref_forward(model, x, amp) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        return model(x).float()


@torch.no_grad()
def reference_center(model, images, amp) -> torch.Tensor:
    b = images.shape[0]
    p = _ref_forward(model, torch.cat([images, images.flip(-1)]), amp).softmax(1)
    return (p[:b] + p[b:]) / 2


@torch.no_grad()
def reference_dense(model, images, amp) -> torch.Tensor:
    fc1, fc2, fc3 = model.classifier[0], model.classifier[3], model.classifier[6]
    b = images.shape[0]
    x = torch.cat([images, images.flip(-1)])
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        f = model.features(x)
        c = f.shape[1]
        k = int(round((fc1.in_features / c) ** 0.5))
        f = F.relu(F.conv2d(f, fc1.weight.view(fc1.out_features, c, k, k), fc1.bias))
        f = F.relu(F.conv2d(f, fc2.weight.view(fc2.out_features, -1, 1, 1), fc2.bias))
        f = F.conv2d(f, fc3.weight.view(fc3.out_features, -1, 1, 1), fc3.bias)
    p = f.float().mean(dim=(2, 3)).softmax(1)
    return (p[:b] + p[b:]) / 2


@torch.no_grad()
def reference_multicrop(model, images, crop, amp, crop_batch=None) -> torch.Tensor:
    from verydeep.evaluate.crops import crop_positions

    out = []
    h, w = images.shape[-2:]
    for img in images:
        crops = []
        for t, l in crop_positions(h, w, crop):
            c = img[:, max(t, 0): t + crop, max(l, 0): l + crop]
            crops.append(F.pad(c, (0, crop - c.shape[-1], 0, crop - c.shape[-2])))
        batch = torch.stack(crops)
        batch = torch.cat([batch, batch.flip(-1)])
        step = crop_batch or batch.shape[0]
        probs = torch.cat([_ref_forward(model, batch[i: i + step], amp).softmax(1)
                           for i in range(0, batch.shape[0], step)])
        out.append(probs.mean(0))
    return torch.stack(out)


# --- the benchmark ----------------------------------------------------------------------------

def run_eval_bench(cfg: EvalBenchConfig, progress=None) -> list[BenchResult]:
    """Ours and the reference per protocol and Q; ``progress`` (if given) gets the rows so far
    after each case."""
    from verydeep.bench.reference import reference_model
    from verydeep.evaluate.crops import crops_per_image
    from verydeep.evaluate.protocols import center, dense_scores, multicrop
    from verydeep.models import create_model
    from verydeep.runtime import build_runtime

    device = resolve_device(cfg.device)
    amp = torch.bfloat16 if device.type == "cuda" else None  # what the protocols use
    protocols = [p.strip() for p in cfg.protocols.split(",") if p.strip()]
    for p in protocols:
        if p not in METHODS:
            raise ValueError(f"unknown protocol {p!r}; choose from {', '.join(METHODS)}")
    head = max(1, cfg.crop_size // 32)
    torch.manual_seed(cfg.seed)
    runtime = build_runtime(device)  # the policy every evaluation runs under (memory format, AMP)
    ours = runtime.prepare_model(create_model(cfg.model, num_classes=cfg.num_classes, width=cfg.width,
                                              head_size=head)).eval()
    ref = None
    if cfg.reference:
        ref = reference_model(cfg.model, num_classes=cfg.num_classes, width=cfg.width, head_size=head)
        ref = ref.to(device).eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    crop_macs = forward_macs(ours, cfg.crop_size)

    cases = []  # (protocol, Q, input size)
    for protocol in protocols:
        for q in ([cfg.crop_size] if protocol == "center" else _scales(cfg.scales)):
            size = (q, q) if protocol == "center" else (q, int(round(q * cfg.aspect)))
            cases.append((protocol, q, size))

    results: list[BenchResult] = []
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    for protocol, q, (h, w) in cases:
        images = torch.randn(cfg.batch_size, 3, h, w, generator=gen).to(device)
        if protocol == "center":
            macs = 2 * crop_macs
            ours_fn = lambda: center(ours, images, runtime=runtime)
            ref_fn = lambda: reference_center(ref, images, amp)
        elif protocol == "dense":
            macs = 2 * dense_macs(ours, h, w)
            ours_fn = lambda: dense_scores(ours, images, runtime=runtime)
            ref_fn = lambda: reference_dense(ref, images, amp)
        else:
            macs = crops_per_image() * crop_macs
            ours_fn = lambda: multicrop(ours, images, cfg.crop_size, crop_batch=cfg.crop_batch, runtime=runtime)
            ref_fn = lambda: reference_multicrop(ref, images, cfg.crop_size, amp, cfg.crop_batch)
        label = "center 224-crop" if protocol == "center" and cfg.crop_size == 224 else (
            f"center {cfg.crop_size}-crop" if protocol == "center" else f"{protocol} Q={q}")
        runs = [("ours", ours_fn)] + ([("reference", ref_fn)] if ref is not None else [])
        # Interleaved windows: ours, reference, ours, ... so load from other processes hits both.
        rates = {who: [] for who, _ in runs}
        mem = {who: 0.0 for who, _ in runs}
        for r in range(cfg.repeats):
            for who, fn in runs:
                reset_peak_memory(device)
                _, _, window = time_steps(fn, device=device, steps=cfg.steps, warmup=cfg.warmup if r == 0 else 0,
                                          repeats=1, images_per_step=cfg.batch_size,
                                          min_seconds=cfg.min_seconds)
                rates[who] += window
                mem[who] = max(mem[who], peak_memory_mb(device))
        for who, _ in runs:
            ips = statistics.median(rates[who])
            results.append(BenchResult(
                bench="eval", variant=f"{who} {label}", images_per_s=ips,
                ms_per_step=1000 * cfg.batch_size / ips, batch_size=cfg.batch_size,
                peak_memory_mb=mem[who], tflops=inference_tflops(macs, ips), samples=rates[who],
                reference=f"reference {label}" if who == "ours" and ref is not None else None,
                notes=f"{h}x{w} input, flips included",
            ))
        del images
        gc.collect()
        if progress is not None:
            progress(list(results))
    return results
