"""One optimiser step on one global batch, in whatever parallel mode the strategy runs.

The non-finite policy never lets a NaN or infinite loss reach the weights, and on CUDA it
does so without reading anything back to the host: the step computes a finiteness flag on
the device and hands it to a fused optimiser as ``found_inf`` (the protocol
``torch.amp.GradScaler`` uses), whose kernel then leaves parameters, momentum and weight
decay untouched. The loss comes back as a device tensor; a non-finite value means the update
was dropped, and the loop reads it back with the other losses at its next log line (see
:class:`~verydeep.train.metrics.TrainMeter`). Where no fused optimiser can take the flag (the
CPU's plain loops, whose arithmetic the bitwise-resume guarantee is built on, DTensor
parameters, fp16 loss scaling) the step reads the flag on the host, as cheap there as it is
anywhere on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from verydeep.errors import EXIT_DIVERGED, VerydeepError
from verydeep.parallel.strategy import ParallelStrategy
from verydeep.train.optim import initialise_momentum
from verydeep.train.schedules import LRSchedule


class NonFiniteLossError(VerydeepError, RuntimeError):
    """Training diverged: a NaN or infinite loss under ``train.nonfinite=stop``."""

    exit_code = EXIT_DIVERGED

    def __init__(self, message: str, value: float = math.nan) -> None:
        super().__init__(message)
        self.value = value  # the loss


class TooManySkippedSteps(NonFiniteLossError):
    """Under ``train.nonfinite=skip``, more than ``train.max_skipped_share`` of the steps were skipped."""


@dataclass(frozen=True)
class StepSettings:
    """What a step takes from the run's configuration (``train.*``, ``optim.grad_clip``, the runtime)."""

    seed: int = 0
    amp_dtype: torch.dtype | None = None
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    nonfinite: str = "stop"  # stop | skip: what a non-finite loss does (the loop acts on it)
    # False: no guard at all, a non-finite loss reaches the optimiser. Only the benchmark's
    # ``nosync`` variant turns it off, to measure what the guard costs.
    check_finite: bool = True


def step_seed(seed: int, step: int, rank: int) -> int:
    # Dropout masks are a function of (seed, step, rank) only, so a resumed run draws exactly
    # the masks the uninterrupted run drew, whatever else consumed random numbers meanwhile.
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def forward_backward(strategy: ParallelStrategy, images: torch.Tensor, labels: torch.Tensor,
                     amp_dtype: torch.dtype | None, scaler: torch.amp.GradScaler,
                     label_smoothing: float) -> torch.Tensor:
    """Forward and backward of one global-batch step in whatever parallel mode; the batch-mean loss.

    The strategy splits the batch into the accumulation micro-batches and weights each by its
    share, so the gradient does not depend on how the batch is split or over how many ranks.
    """
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    return strategy.forward_backward(images, labels, amp_dtype=amp_dtype, label_smoothing=label_smoothing,
                                     loss_scale=scale)


def skips_on_device(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> bool:
    """Whether a non-finite step can be dropped on the device: every parameter group fused
    (their kernels take ``found_inf``) and no fp16 loss scaler (which owns ``found_inf``)."""
    return not scaler.is_enabled() and all(group.get("fused") for group in optimizer.param_groups)


def train_step(strategy: ParallelStrategy, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               schedule: LRSchedule, images: torch.Tensor, labels: torch.Tensor, *, step: int,
               settings: StepSettings) -> torch.Tensor:
    """Optimiser step ``step`` on this rank's share of one global batch; the batch-mean loss
    (0-d, detached, on the device). A non-finite loss means the update was not applied.

    Every rank sees the same loss (the strategies reduce it over the data-parallel ranks), so
    all ranks drop the same steps. Where the drop is decided on the host (see the module doc)
    and ``settings.nonfinite`` is ``stop``, raises :class:`NonFiniteLossError` at once;
    otherwise the loop raises it when it reads the loss back.
    """
    lr = schedule.lr(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(step_seed(settings.seed, step, strategy.dist.rank))
    loss = forward_backward(strategy, images, labels, settings.amp_dtype, scaler,
                            settings.label_smoothing).detach()
    if not settings.check_finite:
        _update(strategy, optimizer, scaler, settings)
    elif skips_on_device(optimizer, scaler):
        _update(strategy, optimizer, scaler, settings, found_inf=(~torch.isfinite(loss)).float())
    elif torch.isfinite(loss):  # a host read: the step's only one, and only on this path
        _update(strategy, optimizer, scaler, settings)
    elif settings.nonfinite == "skip":
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        raise NonFiniteLossError(f"loss is {value} at step {step}", value=value)
    return loss


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
