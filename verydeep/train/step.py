"""One optimiser step on one global batch, in whatever parallel mode the strategy runs.

The step owns the loss: the criterion (``verydeep.train.loss``, in ``StepSettings.loss_fn``)
goes to the strategy's forward-backward. It also owns the guard
(:mod:`verydeep.train.nonfinite`): a NaN or infinite loss or gradient never reaches the
weights, and weights that the update made non-finite are reported as a diverged run. It does so
without reading anything back to the host (on CUDA and on the CPU alike): the step computes a flag over the loss
and every gradient on the device and hands it to a fused optimiser as ``found_inf`` (the
protocol ``torch.amp.GradScaler`` uses), whose kernel then leaves parameters, momentum, step
counts and weight decay untouched. The step's status comes back as a device tensor with its
loss, and the loop reads both back at its next log line (see
:class:`~verydeep.train.metrics.TrainMeter`). Where no fused optimiser can take the flag (DTensor
parameters, fp16 loss scaling) the step reads the flag on the host instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from verydeep.parallel.strategy import ParallelStrategy
from verydeep.train.loss import LossFn, classification_loss
from verydeep.train.nonfinite import DIVERGED, SKIPPED, NonFiniteStep, nonfinite_flag
from verydeep.train.optim import initialise_momentum
from verydeep.train.schedules import LRSchedule


@dataclass(frozen=True)
class StepSettings:
    """What a step takes from the run's configuration (``train.*``, ``optim.grad_clip``, the runtime)."""

    seed: int = 0
    amp_dtype: torch.dtype | None = None
    loss_fn: LossFn = field(default_factory=classification_loss)  # train.label_smoothing built in
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    nonfinite: str = "stop"  # stop | skip: what a non-finite loss or gradient does (the loop acts on it)
    # False: no guard at all, a non-finite loss or gradient reaches the optimiser. Only the
    # benchmark's ``nosync`` variant turns it off, to measure what the guard costs.
    check_finite: bool = True


class StepResult(NamedTuple):
    loss: torch.Tensor  # the batch-mean loss: 0-d, detached, on the device
    # 0-d on the device: nonfinite.APPLIED, SKIPPED (a non-finite loss or gradient: the update
    # was dropped) or DIVERGED (the update left non-finite weights); None: not checked.
    status: torch.Tensor | None


def step_seed(seed: int, step: int, rank: int) -> int:
    # Dropout masks are a function of (seed, step, rank) only, so a resumed run draws exactly
    # the masks the uninterrupted run drew, whatever else consumed random numbers meanwhile.
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def seed_step(seed: int, device: torch.device) -> None:
    """Seed the generators a step draws its dropout masks from: the CPU's and, on CUDA, the
    step's device's. The same state ``torch.manual_seed`` leaves them in, without seeding every
    other device and device type as well (0.1 ms a step on the CPU, 0.3% of the demo net's step)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)


def forward_backward(strategy: ParallelStrategy, images: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn,
                     amp_dtype: torch.dtype | None, scaler: torch.amp.GradScaler) -> torch.Tensor:
    """Forward and backward of one global-batch step in whatever parallel mode; the batch-mean loss.

    The strategy splits the batch into the accumulation micro-batches and weights each by its
    share, so the gradient does not depend on how the batch is split or over how many ranks.
    """
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    return strategy.forward_backward(images, labels, loss_fn, amp_dtype=amp_dtype, loss_scale=scale)


def skips_on_device(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> bool:
    """Whether a non-finite step can be dropped on the device: every parameter group fused
    (their kernels take ``found_inf``) and no fp16 loss scaler (which owns ``found_inf``)."""
    return not scaler.is_enabled() and all(group.get("fused") for group in optimizer.param_groups)


def train_step(strategy: ParallelStrategy, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               schedule: LRSchedule, images: torch.Tensor, labels: torch.Tensor, *, step: int,
               settings: StepSettings) -> StepResult:
    """Optimiser step ``step`` on this rank's share of one global batch: its loss and status.

    Every rank sees the same loss (the strategies reduce it over the data-parallel ranks) and
    the same flags (:meth:`~verydeep.parallel.base.ParallelStrategy.any_rank` where ranks
    hold different parts of the net), so all ranks drop the same steps. Where the check is
    read on the host (see the module doc), a dropped step under ``settings.nonfinite=stop``
    and non-finite weights raise at once (:class:`~verydeep.train.nonfinite.Diverged`);
    otherwise the loop raises when it reads the status back.
    """
    lr = schedule.lr(step)
    for group in optimizer.param_groups:  # a fine-tuning run's pretrained layers: lr x optim.pretrained_lr_scale
        group["lr"] = lr * group.get("lr_scale", 1.0)
    seed_step(step_seed(settings.seed, step, strategy.dist.rank), strategy.dist.device)
    loss = forward_backward(strategy, images, labels, settings.loss_fn, settings.amp_dtype, scaler).detach()
    if not settings.check_finite:
        _update(strategy, optimizer, scaler, settings)
        return StepResult(loss, None)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # fp16 loss scaling: overflowing gradients are the scaler's routine (it skips the step and
    # lowers the scale), so only the loss is ours to check.
    checked = [loss] if scaler.is_enabled() else [loss, *(p.grad for p in params if p.grad is not None)]
    found_inf = strategy.any_rank(nonfinite_flag(checked, loss.device))
    on_device = skips_on_device(optimizer, scaler)
    if on_device:
        _update(strategy, optimizer, scaler, settings, found_inf=found_inf)
    elif found_inf.item():  # a host read: the step's only one before the update, and only on this path
        optimizer.zero_grad(set_to_none=True)
        if settings.nonfinite != "skip":
            raise NonFiniteStep(step, loss.item(), SKIPPED).error()
    else:
        _update(strategy, optimizer, scaler, settings)
    # The weights and the batch-norm running statistics, which the forward updated even when
    # the update was dropped: a finite loss can hide statistics that overflowed (a training
    # forward never reads them; validation does).
    diverged = strategy.any_rank(nonfinite_flag([*params, *strategy.floating_buffers()], loss.device))
    if not on_device and diverged.item():
        raise NonFiniteStep(step, loss.item(), DIVERGED).error()
    return StepResult(loss, torch.maximum(found_inf * SKIPPED, diverged * DIVERGED))


def _update(strategy: ParallelStrategy, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            settings: StepSettings, found_inf: torch.Tensor | None = None) -> None:
    """Clip, step and clear the gradients; with ``found_inf`` (1.0: drop the update) through
    the fused kernels' own skip, which leaves weights and optimiser state untouched."""
    if settings.grad_clip:
        scaler.unscale_(optimizer)
        strategy.clip_grad_norm_(settings.grad_clip)
    if found_inf is None:
        scaler.step(optimizer)
    else:
        initialise_momentum(optimizer)
        optimizer.grad_scale, optimizer.found_inf = None, found_inf
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
