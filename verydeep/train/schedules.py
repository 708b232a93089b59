"""Learning-rate schedules.

``plateau`` is the paper's rule (Sec. 3.1): the LR is divided by 10 when the validation
accuracy stops improving; it was decreased 3 times. Here: after each end-of-epoch validation,
if top-1 error has not improved on the best by more than ``threshold`` for ``patience``
validations in a row, the LR is multiplied by ``factor``; when that happens with
``max_decreases`` decreases already made, training stops instead. The iteration cap
(``train.max_iterations``, the paper's 370K) is applied by the loop.

The others are functions of progress: ``step``/``multistep`` by epoch, ``cosine`` per
optimiser step after a linear warmup.
"""

from __future__ import annotations

import math

from verydeep.training_config import ScheduleConfig


class LRSchedule:
    def __init__(self, cfg: ScheduleConfig, base_lr: float, steps_per_epoch: int, epochs: int,
                 max_iterations: int | None = None) -> None:
        self.cfg = cfg
        self.base_lr = base_lr
        self.steps_per_epoch = max(1, steps_per_epoch)
        total = epochs * self.steps_per_epoch
        self.total_steps = min(total, max_iterations) if max_iterations else total
        # plateau state
        self.decreases = 0
        self.best: float | None = None
        self.bad_validations = 0

    # -- functional schedules -------------------------------------------------------------
    def lr(self, step: int) -> float:
        """LR for optimiser step ``step`` (0-based)."""
        c = self.cfg
        epoch = step // self.steps_per_epoch
        if c.name == "plateau":
            return self.base_lr * c.factor ** self.decreases
        if c.name == "constant":
            return self.base_lr
        if c.name == "step":
            return self.base_lr * c.gamma ** (epoch // c.step_size)
        if c.name == "multistep":
            return self.base_lr * c.gamma ** sum(epoch >= m for m in c.milestones)
        # cosine with linear warmup
        warmup = int(round(c.warmup_epochs * self.steps_per_epoch))
        if step < warmup:
            start = self.base_lr * c.warmup_start_factor
            return start + (self.base_lr - start) * step / warmup
        span = max(1, self.total_steps - warmup)
        t = min(1.0, (step - warmup) / span)
        return c.min_lr + 0.5 * (self.base_lr - c.min_lr) * (1 + math.cos(math.pi * t))

    # -- the paper's rule -----------------------------------------------------------------
    def on_validation(self, top1_error: float) -> str:
        """Feed an end-of-epoch val top-1 error; returns 'improved', 'wait', 'decrease' or 'stop'."""
        if self.cfg.name != "plateau":
            return "n/a"
        if self.best is None or top1_error < self.best - self.cfg.threshold:
            self.best = top1_error
            self.bad_validations = 0
            return "improved"
        self.bad_validations += 1
        if self.bad_validations <= self.cfg.patience:
            return "wait"
        self.bad_validations = 0
        if self.decreases >= self.cfg.max_decreases:
            return "stop"
        self.decreases += 1
        return "decrease"

    def state_dict(self) -> dict:
        return {"decreases": self.decreases, "best": self.best, "bad_validations": self.bad_validations}

    def load_state_dict(self, state: dict) -> None:
        self.decreases = int(state["decreases"])
        self.best = state["best"]
        self.bad_validations = int(state["bad_validations"])
