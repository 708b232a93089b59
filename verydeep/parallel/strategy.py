"""One interface over every way of spreading a training step across processes.

The training loop builds a strategy once and then never asks which mode it is in::

    strategy = build_strategy(model, cfg.parallel, dist, crop_size=cfg.data.crop_size, accum=accum)
    optimizer = build_optimizer(strategy.local_module, ...)   # this rank's parameters only
    loader = ...(rank=strategy.data_rank, world_size=strategy.data_world)
    for images, labels in loader:                # this rank's share of the global batch
        loss = strategy.forward_backward(images, labels, loss_fn, amp_dtype=amp_dtype)
        strategy.clip_grad_norm_(max_norm)       # optional
        optimizer.step(); optimizer.zero_grad(set_to_none=True)
    logits = strategy.eval_logits(images)        # validation (collective: every rank calls it)
    correct = strategy.sum_over_data(correct)    # totals over the data-parallel replicas
    state = strategy.full_state_dict()           # collective; the full dict on rank 0, None elsewhere
    strategy.load_full_state_dict(state)         # every rank passes the same full dict

Modes (``build_strategy`` picks one from :class:`~verydeep.parallel.config.ParallelConfig`):

- :class:`DataParallel` (one process, or DDP over all processes): every rank holds the whole
  net and its own shard of the batch; gradients averaged by DDP.
- :class:`~verydeep.parallel.pipeline.PipelineParallel` (``pipeline_stages=K``): the net cut
  into K stages balanced by estimated FLOPs, micro-batches through a GPipe or 1F1B schedule of
  ``torch.distributed.pipelining``; with ``world = dp * K`` processes a 2-D mesh ("dp", "pp")
  runs dp pipelines side by side and averages each stage's gradients over its dp group.
- :class:`~verydeep.parallel.tensor_parallel.HybridParallel` (``tensor_parallel_fc=true``):
  Krizhevsky's "one weird trick": convs data-parallel, FC1/FC2 tensor-parallel.

What every rank gets:

- ``forward_backward(images, labels, loss_fn, *, amp_dtype=None, loss_scale=1.0)``
  runs forward and backward on this rank's batch (``images`` may be ignored on pipeline ranks
  that are not the first stage, and ``labels`` on those that are not the last, but every rank
  of a pipeline must be given the same batch) and leaves in ``.grad`` the gradient of the
  loss *mean over the global batch* (all data-parallel shards together). ``loss_fn(logits,
  labels)`` is the criterion, a batch mean (the training step's, ``verydeep.train.loss``);
  the strategies define none of their own. It returns
  that mean loss (0-d, detached, unscaled) on every rank. ``loss_scale`` multiplies the loss
  before backward (fp16 loss scaling; data-parallel mode only, see docs/parallel.md).
- ``eval_logits(images, *, amp_dtype=None)`` returns logits (float32, or float64 for an fp64 net) for ``images`` on every
  rank, in eval mode, without gradients. It is collective in the pipeline and hybrid modes:
  every rank calls it the same number of times (a rank whose validation shard ran out passes
  an empty batch). In pipeline mode every stage of a pipeline gets the same logits (broadcast
  from the last stage), so count metrics with ``sum_over_data`` (not over the whole world).
- ``sum_over_data(t)`` sums a tensor in place over the data-parallel replicas (each image
  counted once) and returns it.
- ``local_module`` / ``parameters()``: what this rank owns and updates (a pipeline stage; the
  whole net with FC1/FC2 sharded as DTensors in hybrid mode; the whole net otherwise).
- ``full_state_dict()``: collective; on rank 0 the full, unsharded state dict with torchvision
  keys on the CPU (loads with ``VGG.load_state_dict`` in a single process), ``None`` elsewhere.
- ``load_full_state_dict(sd)``: every rank passes the same full state dict (e.g. a single-process
  checkpoint); each keeps its part. Resume across modes and world sizes.
- ``data_rank`` / ``data_world``: which shard of the data this rank loads. Pipeline ranks of
  one dp index load the same batch.
- ``train()`` / ``eval()``, ``describe()`` (a human-readable summary for the log, e.g. the
  pipeline split), ``clip_grad_norm_(max_norm)`` (global norm over all ranks' shards).
- ``any_rank(flag)``: a 0-d device flag (1.0: found) raised on every rank when any rank
  raised it, where ranks hold different parts of the net (``sharded``: pipeline stages, FC
  shards): the step's non-finite check sees only this rank's tensors.

The model is passed on any device (CPU is cheapest: a pipeline rank moves only its stage to
``dist.device``). Weights must be identical on every rank when the strategy is built (same
seed or a loaded checkpoint); DDP and DTensor distribution take rank 0's copy anyway.
"""

from __future__ import annotations

from verydeep.models.vgg import VGG
from verydeep.parallel.base import ParallelStrategy
from verydeep.parallel.config import ParallelConfig
from verydeep.parallel.data_parallel import DataParallel
from verydeep.parallel.distributed import DistInfo
from verydeep.parallel.pipeline import PipelineParallel
from verydeep.parallel.tensor_parallel import HybridParallel


def build_strategy(model: VGG, parallel: ParallelConfig, dist_info: DistInfo, *, crop_size: int = 224,
                   accum: int = 1) -> ParallelStrategy:
    """The strategy ``parallel`` asks for (``accum``: gradient-accumulation steps, DP/hybrid)."""
    if parallel.pipeline_stages > 1 and parallel.tensor_parallel_fc:
        raise ValueError("parallel.pipeline_stages > 1 and parallel.tensor_parallel_fc are exclusive: pick one")
    if parallel.pipeline_stages > 1:
        if accum != 1:
            raise ValueError(
                f"gradient accumulation (accum={accum}) does not combine with pipeline parallelism: "
                f"raise parallel.microbatches instead (micro-batches are the pipeline's accumulation)")
        return PipelineParallel(model, dist_info, stages=parallel.pipeline_stages,
                                microbatches=parallel.microbatches, schedule=parallel.pipeline_schedule,
                                crop_size=crop_size)
    if parallel.tensor_parallel_fc:
        return HybridParallel(model, dist_info, accum=accum)
    return DataParallel(model, dist_info, sync_batch_norm=parallel.sync_batch_norm, accum=accum)


__all__ = ["ParallelStrategy", "DataParallel", "PipelineParallel", "HybridParallel", "build_strategy"]
