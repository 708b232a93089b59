"""Validation during training: single-crop protocol (rescale to Q, centre crop), loss and
top-1/top-5 error in percent. Unreadable images count as errors, and are reported; so are
images whose logits hold a NaN or inf (a validation with any, or with a non-finite loss, is
never a run's best: ``verydeep.train.loop``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from verydeep.config import Config
from verydeep.data import Splits, build_eval_loader
from verydeep.parallel.strategy import ParallelStrategy
from verydeep.runtime import Runtime
from verydeep.topk import topk_hits


@torch.no_grad()
def validate(strategy: ParallelStrategy, cfg: Config, splits: Splits, *, per_process_batch: int,
             runtime: Runtime, logits_fn: Callable[..., torch.Tensor] | None = None) -> dict:
    """Loss and errors of the strategy's net, or of ``logits_fn`` (e.g. the weights' moving
    average, ``ModelEMA.logits``: the same signature as ``strategy.eval_logits``)."""
    device = runtime.device
    was_training = strategy.local_module.training
    strategy.eval()
    loader = build_eval_loader(cfg.data, splits.selection, per_process_batch, scale=cfg.data.eval_scale,
                               crop=cfg.data.eval_crop, rank=strategy.data_rank, world_size=strategy.data_world)
    # Model-parallel forwards are collective: every rank makes the same number of calls, a rank
    # whose shard ran out passing empty batches.
    calls = torch.tensor([len(loader)], device=device)
    if torch.distributed.is_initialized() and strategy.dist.world_size > 1:
        torch.distributed.all_reduce(calls, op=torch.distributed.ReduceOp.MAX)
    empty = torch.zeros(0, 3, cfg.data.eval_crop, cfg.data.eval_crop, device=device)
    batches = iter(loader)
    # [loss sum, top-1 correct, top-5 correct, decoded images, unreadable images, non-finite logits]
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    for _ in range(int(calls.item())):
        images, labels, _indices, bad = next(batches, (empty, torch.zeros(0, dtype=torch.long), None, []))
        sums[4] += len(bad)
        images = runtime.prepare_input(images)
        labels = labels.to(device, non_blocking=True)
        logits = (logits_fn or strategy.eval_logits)(images, amp_dtype=runtime.amp_dtype)
        if images.shape[0] == 0:
            continue
        sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        hits = topk_hits(logits, labels, ks=(1, 5)).sum(dim=0)
        sums[1] += hits[0]
        sums[2] += hits[1]
        sums[3] += images.shape[0]
        sums[5] += (~torch.isfinite(logits)).any(dim=1).sum()
    strategy.sum_over_data(sums)
    strategy.train(was_training)
    loss, c1, c5, n, n_bad, n_nonfinite = sums.tolist()
    total = n + n_bad
    if total == 0:
        raise ValueError("the validation split is empty")
    return {
        "val_loss": loss / max(n, 1),
        "val_top1_error": 100.0 * (1 - c1 / total),
        "val_top5_error": 100.0 * (1 - c5 / total),
        "val_images": int(total),
        "val_bad_images": int(n_bad),
        "val_nonfinite_images": int(n_nonfinite),  # images whose logits hold a NaN or inf
    }
