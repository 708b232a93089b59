"""Validation during training: single-crop protocol (rescale to Q, centre crop), loss and
top-1/top-5 error in percent. Unreadable images count as errors, and are reported."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from verydeep.data import build_eval_loader
from verydeep.evaluate.metrics import topk_hits
from verydeep.parallel.distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def validate(net, cfg, splits, dist: DistInfo, *, per_process_batch: int,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> dict:
    was_training = net.training
    net.eval()
    loader = build_eval_loader(cfg.data, splits.val, per_process_batch, scale=cfg.data.eval_scale,
                               crop=cfg.data.eval_crop, rank=dist.rank, world_size=dist.world_size)
    # [loss sum, top-1 correct, top-5 correct, decoded images, unreadable images]
    sums = torch.zeros(5, dtype=torch.float64, device=dist.device)
    for images, labels, _indices, bad in loader:
        sums[4] += len(bad)
        if images.shape[0] == 0:
            continue
        images = images.to(dist.device, non_blocking=True)
        labels = labels.to(dist.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dist.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = net(images).float()
        sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        hits = topk_hits(logits, labels, ks=(1, 5)).sum(dim=0)
        sums[1] += hits[0]
        sums[2] += hits[1]
        sums[3] += images.shape[0]
    all_reduce_sum(sums)
    net.train(was_training)
    loss, c1, c5, n, n_bad = sums.tolist()
    total = n + n_bad
    if total == 0:
        raise ValueError("the validation split is empty")
    return {
        "val_loss": loss / max(n, 1),
        "val_top1_error": 100.0 * (1 - c1 / total),
        "val_top5_error": 100.0 * (1 - c5 / total),
        "val_images": int(total),
        "val_bad_images": int(n_bad),
    }
