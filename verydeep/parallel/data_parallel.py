"""Data parallelism: the whole net on every rank, the global batch split over ranks;
DistributedDataParallel around the unchanged model averages the gradients."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from verydeep.models.vgg import VGG
from verydeep.models.weights import clean_state_dict, model_state_dict
from verydeep.parallel.base import ParallelStrategy, check_full_state_dict, upcast
from verydeep.parallel.distributed import DistInfo
from verydeep.runtime import autocast


def wrap_data_parallel(model: nn.Module, dist_info: DistInfo, sync_batch_norm: bool = False) -> nn.Module:
    if not dist_info.distributed:
        return model
    if sync_batch_norm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
    # Buckets sized so FC1's 102.8M-weight gradient (VGG16) does not sit in one giant bucket.
    return DistributedDataParallel(model, device_ids=ids, bucket_cap_mb=100,
                                   gradient_as_bucket_view=True)


class DataParallel(ParallelStrategy):
    """One process, or DDP: the whole net on every rank, the global batch split over ranks.

    ``accum`` micro-batches per step (gradient accumulation; DDP synchronises only on the last).
    """

    mode = "data_parallel"

    def __init__(self, model: VGG, dist_info: DistInfo, *, sync_batch_norm: bool = False, accum: int = 1) -> None:
        super().__init__(dist_info)
        if accum < 1:
            raise ValueError(f"accum must be >= 1, got {accum}")
        self.model = model.to(dist_info.device)
        self.net = wrap_data_parallel(self.model, dist_info, sync_batch_norm)
        self.local_module = self.net
        self.accum = accum
        self._keys = list(model_state_dict(self.model))

    @property
    def data_rank(self) -> int:
        return self.dist.rank

    @property
    def data_world(self) -> int:
        return self.dist.world_size

    def forward_backward(self, images, labels, loss_fn, *, amp_dtype=None, loss_scale=1.0):
        n = images.shape[0]
        if n % self.accum:
            raise ValueError(f"per-process batch {n} is not divisible by accum={self.accum}")
        total = torch.zeros((), device=images.device, dtype=torch.float64)
        size = n // self.accum
        for i in range(self.accum):
            # contiguous slices are views: no gather copy, no index tensor sent to the device
            x, y = images[i * size:(i + 1) * size], labels[i * size:(i + 1) * size]
            last = i == self.accum - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.net, "no_sync") else self.net.no_sync()
            with sync:
                with autocast(images.device, amp_dtype):
                    logits = self.net(x)
                loss = loss_fn(logits, y)
                (loss * (size / n) * loss_scale).backward()
            total += loss.detach() * (size / n)
        return self.sum_over_data(total) / self.dist.world_size

    @torch.no_grad()
    def eval_logits(self, images, *, amp_dtype=None):
        with autocast(images.device, amp_dtype):
            # The plain module: DDP's forward adds nothing at eval, and skipping it keeps
            # ranks with uneven validation shards from waiting on each other.
            return upcast(self.model(images))

    def sum_over_data(self, t):
        if dist.is_initialized() and self.dist.world_size > 1:
            dist.all_reduce(t)
        return t

    def full_state_dict(self):
        if not self.dist.is_main:
            return None
        return {k: v.detach().cpu().clone() for k, v in model_state_dict(self.model).items()}

    def load_full_state_dict(self, sd):
        sd = clean_state_dict(sd)
        check_full_state_dict(self._keys, sd)
        self.model.load_state_dict(sd)

    def _grad_sq_sums(self):
        # Grads are already identical on every rank after DDP: count them once.
        grads = [p.grad.double().pow(2).sum() for p in self.model.parameters() if p.grad is not None]
        zero = torch.zeros((), device=self.device, dtype=torch.float64)
        once = torch.stack(grads).sum() if grads else zero
        if self.dist.world_size > 1:  # all-reduced by the caller: contribute from rank 0 only
            return zero, once if self.dist.is_main else zero.clone()
        return once, zero

    def describe(self):
        if self.dist.world_size == 1:
            return f"single process on {self.device}" + (f", {self.accum} accumulation steps" if self.accum > 1 else "")
        return f"data parallel (DDP): {self.dist.world_size} processes, each its own batch shard"
