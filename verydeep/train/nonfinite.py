"""Non-finite numbers in training, in one place: the check, the policy, the accounting.

What is checked, every step, on the device (no host read on CUDA):

- before the update, the loss and every gradient: one NaN or inf and the update is dropped,
  weights, momentum and step counts untouched (:func:`nonfinite_flag` over them feeds the
  fused optimisers' ``found_inf``, the flag ``torch.amp`` uses);
- after the update (applied or dropped), every weight and batch-norm running statistic: a
  finite loss and finite gradients can still blow them up (a learning rate far too high),
  and the forward updates the running statistics even when the update is dropped (a
  training-mode forward never reads them; validation does); that run has diverged and stops
  (exit code 5) whatever the policy, since neither can be taken back.

The policy (``train.nonfinite``) says what a dropped update does to the run: ``stop`` ends it
(exit code 5, one line naming the step and what is on disk), ``skip`` counts it and trains on,
failing the run once more than ``train.max_skipped_share`` of its steps were skipped.
Checkpoints get the same guard at the door: weights with a NaN or inf are never written
(:func:`check_finite_weights`), so ``best.pt`` and ``last.pt`` keep their last good state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from verydeep.errors import EXIT_DIVERGED, VerydeepError
from verydeep.train.metrics import MetricsLog
from verydeep.train.state import TrainState
from verydeep.training_config import NONFINITE_POLICIES

log = logging.getLogger(__name__)

# A step's status, as the step returns it (a 0-d device tensor) and the loop reads it back.
APPLIED, SKIPPED, DIVERGED = 0, 1, 2

# Under train.nonfinite=skip, the share of skipped steps is judged at every log line only
# from this many steps on (a stray NaN among the first few steps is not yet a diverged run),
# and always when the run finishes.
MIN_STEPS_TO_JUDGE = 100


class Diverged(VerydeepError, RuntimeError):
    """Training diverged (exit code 5): a non-finite step under ``train.nonfinite=stop``,
    non-finite weights, or too many skipped steps."""

    exit_code = EXIT_DIVERGED

    def __init__(self, message: str, value: float = math.nan, event: NonFiniteStep | None = None) -> None:
        super().__init__(message)
        self.value = value  # the step's loss
        self.event = event


class NonFiniteLossError(Diverged):
    """A NaN or infinite loss or gradient under ``train.nonfinite=stop``."""


class NonFiniteWeights(Diverged):
    """The weights became NaN or infinite (after an update, or in a checkpoint about to be written)."""


class TooManySkippedSteps(Diverged):
    """Under ``train.nonfinite=skip``, more than ``train.max_skipped_share`` of the steps were skipped."""


@dataclass(frozen=True)
class NonFiniteStep:
    """A step whose status came back other than applied."""

    step: int
    loss: float
    status: int  # SKIPPED or DIVERGED

    def describe(self) -> str:
        if self.status == DIVERGED:
            return f"the weights (or batch-norm statistics) became non-finite at step {self.step} (loss {self.loss:g})"
        if not math.isfinite(self.loss):
            return f"loss is {self.loss} at step {self.step}"
        return f"a gradient is non-finite at step {self.step} (loss {self.loss:g})"

    def error(self, message: str | None = None) -> Diverged:
        cls = NonFiniteWeights if self.status == DIVERGED else NonFiniteLossError
        return cls(message or self.describe(), value=self.loss, event=self)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def nonfinite_flag(tensors: Iterable[torch.Tensor], device: torch.device) -> torch.Tensor:
    """A 0-d float on ``device``: 1.0 when any element of ``tensors`` is NaN or infinite, else 0.0.

    No host read: the check is ``torch.amp``'s own kernel (one launch per device and dtype),
    with an unscale factor of 1.0, which leaves every finite value as it was."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        local = _local(t)
        groups.setdefault((local.device, local.dtype), []).append(local)
    flag = torch.zeros((), device=device)
    for (where, _), members in groups.items():
        found = torch.zeros(1, device=where)
        torch._amp_foreach_non_finite_check_and_unscale_(members, found, torch.ones(1, device=where))
        flag = torch.maximum(flag, found.to(device).squeeze(0))
    return flag


def check_finite_weights(weights: dict[str, torch.Tensor], what: str) -> None:
    """Raise :class:`NonFiniteWeights` naming the first tensors with a NaN or inf (a host check,
    made before a checkpoint is written)."""
    bad = [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise NonFiniteWeights(f"{what}: {len(bad)} of {len(weights)} tensors hold NaN or inf "
                               f"({', '.join(bad[:3])}{more})")


class NonFiniteAccounting:
    """What the run does with the steps whose status came back other than applied: stop it, or
    count them (``skip``) in the state, the metrics and the log, and fail once too many were."""

    def __init__(self, policy: str, max_skipped_share: float, run_dir: Path, metrics: MetricsLog,
                 is_main: bool) -> None:
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"train.nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {policy!r}")
        self.policy, self.max_skipped_share = policy, max_skipped_share
        self.run_dir, self.metrics, self.is_main = run_dir, metrics, is_main

    def stopped(self, state: TrainState, event: NonFiniteStep) -> Diverged:
        """The one-line error of a run stopped at ``event``: where it stopped, and what is on
        disk (never a checkpoint that does not exist)."""
        batch = state.batch_in_epoch - (state.step - event.step)  # the step's batch in this epoch
        last = self.run_dir / "last.pt"
        saved = (f"{last} holds the last good state" if last.is_file()
                 else f"no checkpoint was written before it (nothing in {self.run_dir} to resume from)")
        advice = ("the run diverged: lower optim.lr" if event.status == DIVERGED
                  else "set train.nonfinite=skip to skip such steps, or lower optim.lr")
        return event.error(f"{event.describe()} (epoch {state.epoch + 1}, batch {batch}); stopped without "
                           f"saving: {saved} ({advice})")

    def account(self, state: TrainState, read_back: list[tuple[int, float, int]]) -> None:
        """Act on the (step, loss, status) of the steps read back since the last call that were
        not applied: stop the run (non-finite weights, or ``stop``); or count the skipped ones
        and judge their share (``skip``)."""
        if not read_back:
            return
        events = [NonFiniteStep(*event) for event in read_back]
        for event in events:
            if event.status == DIVERGED or self.policy != "skip":
                raise self.stopped(state, event)
        state.skipped_steps += len(events)
        for event in events:
            self.metrics.write({"kind": "skipped", "epoch": state.epoch + 1, "step": event.step})
        if self.is_main:
            log.warning("%s: update skipped (%d of %d steps skipped so far)",
                        "; ".join(event.describe() for event in events), state.skipped_steps, state.step)
        self.judge_share(state, final=False)

    def judge_share(self, state: TrainState, *, final: bool) -> None:
        """Fail the run when more than ``train.max_skipped_share`` of its steps were skipped."""
        limit = self.max_skipped_share
        if state.skipped_steps <= limit * state.step or (not final and state.step < MIN_STEPS_TO_JUDGE):
            return
        raise TooManySkippedSteps(
            f"{state.skipped_steps} of {state.step} steps had a non-finite loss or gradient and were skipped, more "
            f"than train.max_skipped_share={limit:g}: the run is diverging (lower optim.lr, or raise the share); "
            f"{self.run_dir / 'last.pt'} holds its last state")
