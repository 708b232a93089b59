"""One optimiser step on one global batch, in whatever parallel mode the strategy runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from verydeep.parallel.strategy import ParallelStrategy
from verydeep.train.schedules import LRSchedule

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A NaN or infinite training loss under ``train.nonfinite=stop``."""


@dataclass(frozen=True)
class StepSettings:
    """What a step takes from the run's configuration (``train.*``, ``optim.grad_clip``, the runtime)."""

    seed: int = 0
    amp_dtype: torch.dtype | None = None
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    nonfinite: str = "stop"  # stop | skip: what a non-finite loss does
    # False: no per-step host read of the loss, and a non-finite loss reaches the optimiser. The
    # loop always checks; the benchmark's ``nosync`` variant measures what the check costs.
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


def train_step(strategy: ParallelStrategy, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               schedule: LRSchedule, images: torch.Tensor, labels: torch.Tensor, *, step: int,
               settings: StepSettings) -> torch.Tensor | None:
    """Optimiser step ``step`` on this rank's share of one global batch; the batch-mean loss
    (0-d, detached), or None when a non-finite loss was skipped (``nonfinite=skip``).

    Raises :class:`NonFiniteLossError` on a non-finite loss under ``nonfinite=stop``, before
    the optimiser touches the weights.
    """
    lr = schedule.lr(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(step_seed(settings.seed, step, strategy.dist.rank))
    loss = forward_backward(strategy, images, labels, settings.amp_dtype, scaler, settings.label_smoothing)
    if settings.check_finite and not torch.isfinite(loss):
        if settings.nonfinite != "skip":
            raise NonFiniteLossError(f"loss is {loss.item()} at step {step}")
        log.warning("non-finite loss (%s) at step %d: step skipped", loss.item(), step)
        optimizer.zero_grad(set_to_none=True)
        return None
    if settings.grad_clip:
        scaler.unscale_(optimizer)
        strategy.clip_grad_norm_(settings.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss
