"""Data parallelism: DistributedDataParallel around the unchanged model."""

from __future__ import annotations

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from verydeep.parallel.distributed import DistInfo


def wrap_data_parallel(model: nn.Module, dist_info: DistInfo, sync_batch_norm: bool = False) -> nn.Module:
    if not dist_info.distributed:
        return model
    if sync_batch_norm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
    # Buckets sized so FC1's 102.8M-weight gradient (VGG16) does not sit in one giant bucket.
    return DistributedDataParallel(model, device_ids=ids, bucket_cap_mb=100,
                                   gradient_as_bucket_view=True)


def unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model, (DistributedDataParallel,)):
        model = model.module
    return getattr(model, "_orig_mod", model)
