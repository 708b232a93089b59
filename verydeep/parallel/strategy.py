"""One interface over every way of spreading a training step across processes.

The training loop builds a strategy once and then never asks which mode it is in::

    strategy = build_strategy(model, cfg.parallel, dist, crop_size=cfg.data.crop_size, accum=accum)
    optimizer = build_optimizer(strategy.local_module, ...)   # this rank's parameters only
    loader = ...(rank=strategy.data_rank, world_size=strategy.data_world)
    for images, labels in loader:                # this rank's share of the global batch
        loss = strategy.forward_backward(images, labels, amp_dtype=amp_dtype)
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

- ``forward_backward(images, labels, *, amp_dtype=None, label_smoothing=0.0, loss_scale=1.0)``
  runs forward and backward on this rank's batch (``images`` may be ignored on pipeline ranks
  that are not the first stage, and ``labels`` on those that are not the last, but every rank
  of a pipeline must be given the same batch) and leaves in ``.grad`` the gradient of the
  cross-entropy *mean over the global batch* (all data-parallel shards together). It returns
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

The model is passed on any device (CPU is cheapest: a pipeline rank moves only its stage to
``dist.device``). Weights must be identical on every rank when the strategy is built (same
seed or a loaded checkpoint); DDP and DTensor distribution take rank 0's copy anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from verydeep.models.vgg import VGG
from verydeep.models.weights import clean_state_dict, model_state_dict
from verydeep.parallel.config import ParallelConfig
from verydeep.parallel.data_parallel import wrap_data_parallel
from verydeep.parallel.distributed import DistInfo


def check_full_state_dict(expected: list[str], sd: dict) -> None:
    """Raise with the missing and unexpected keys unless ``sd`` is exactly a full VGG state dict."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in set(expected)]
    if missing or unexpected:
        raise ValueError(
            f"not a full state dict of this net: missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
            f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}"
        )


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Low-precision (AMP) logits to float32 for the loss and metrics; fp32/fp64 unchanged."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


class ParallelStrategy:
    """Base class: what the training loop sees (see the module docstring)."""

    mode: str = "base"

    def __init__(self, dist_info: DistInfo) -> None:
        self.dist = dist_info
        self.device = dist_info.device

    # -- what the subclasses provide -------------------------------------------------------
    local_module: nn.Module

    @property
    def data_rank(self) -> int:
        raise NotImplementedError

    @property
    def data_world(self) -> int:
        raise NotImplementedError

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor, *, amp_dtype: torch.dtype | None = None,
                         label_smoothing: float = 0.0, loss_scale: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    def eval_logits(self, images: torch.Tensor, *, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        raise NotImplementedError

    def sum_over_data(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        raise NotImplementedError

    def load_full_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.mode}: {self.dist.world_size} process(es)"

    # -- shared ----------------------------------------------------------------------------
    def parameters(self) -> Iterator[nn.Parameter]:
        return self.local_module.parameters()

    def train(self, mode: bool = True) -> "ParallelStrategy":
        self.local_module.train(mode)
        return self

    def eval(self) -> "ParallelStrategy":
        return self.train(False)

    def _grad_sq_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of squared grads counted once globally, sum to be all-reduced over the world)."""
        raise NotImplementedError

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip by the norm of the *whole* net's gradient, whichever rank holds which part."""
        once, shared = self._grad_sq_sums()
        if dist.is_initialized() and self.dist.world_size > 1:
            dist.all_reduce(shared)
        total = (once + shared).sqrt()
        coef = min(1.0, max_norm / (total.item() + 1e-6))
        if coef < 1.0:
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.mul_(coef)
        return total


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

    def forward_backward(self, images, labels, *, amp_dtype=None, label_smoothing=0.0, loss_scale=1.0):
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
                with _autocast(images.device, amp_dtype):
                    logits = self.net(x)
                loss = F.cross_entropy(upcast(logits), y, label_smoothing=label_smoothing)
                (loss * (size / n) * loss_scale).backward()
            total += loss.detach() * (size / n)
        return self.sum_over_data(total) / self.dist.world_size

    @torch.no_grad()
    def eval_logits(self, images, *, amp_dtype=None):
        with _autocast(images.device, amp_dtype):
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


def build_strategy(model: VGG, parallel: ParallelConfig, dist_info: DistInfo, *, crop_size: int = 224,
                   accum: int = 1) -> ParallelStrategy:
    """The strategy ``parallel`` asks for (``accum``: gradient-accumulation steps, DP/hybrid)."""
    if parallel.pipeline_stages > 1 and parallel.tensor_parallel_fc:
        raise ValueError("parallel.pipeline_stages > 1 and parallel.tensor_parallel_fc are exclusive: pick one")
    if parallel.pipeline_stages > 1:
        from verydeep.parallel.pipeline import PipelineParallel

        if accum != 1:
            raise ValueError(
                f"gradient accumulation (accum={accum}) does not combine with pipeline parallelism: "
                f"raise parallel.microbatches instead (micro-batches are the pipeline's accumulation)")
        return PipelineParallel(model, dist_info, stages=parallel.pipeline_stages,
                                microbatches=parallel.microbatches, schedule=parallel.pipeline_schedule,
                                crop_size=crop_size)
    if parallel.tensor_parallel_fc:
        from verydeep.parallel.tensor_parallel import HybridParallel

        return HybridParallel(model, dist_info, accum=accum)
    return DataParallel(model, dist_info, sync_batch_norm=parallel.sync_batch_norm, accum=accum)


__all__ = ["ParallelStrategy", "DataParallel", "build_strategy", "check_full_state_dict"]
