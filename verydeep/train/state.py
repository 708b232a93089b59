"""Where a training run stands: the loop's counters and outcome, checkpointed with the weights."""

from __future__ import annotations

from dataclasses import dataclass, field

# The fields a checkpoint holds, under these names (its top-level keys).
CHECKPOINTED = ("epoch", "step", "batch_in_epoch", "best_top1_error", "bad_files", "stopped_because",
                "plateau_stopped", "skipped_steps")


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken, skipped non-finite steps included (they index the LR and seeds)
    batch_in_epoch: int = 0  # batches of epoch ``epoch`` done: where a resumed run picks up
    best_top1_error: float | None = None  # best end-of-epoch val top-1 error so far (percent)
    bad_files: int = 0  # unreadable training images skipped so far (replacements drawn)
    skipped_steps: int = 0  # steps whose loss was non-finite, their update dropped (train.nonfinite=skip)
    stopped_because: str = ""  # why the run stopped; empty while it runs
    plateau_stopped: bool = False  # the plateau rule ended the run: a resume trains no further
    # The latest validation's figures, for the run's result. Not checkpointed: a resumed run
    # validates again at the end of its epoch.
    last_val: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {name: getattr(self, name) for name in CHECKPOINTED}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step, self.batch_in_epoch = state["epoch"], state["step"], state["batch_in_epoch"]
        self.best_top1_error, self.bad_files = state["best_top1_error"], state["bad_files"]
        # Absent from checkpoints written before the run outcome was recorded.
        self.stopped_because = state.get("stopped_because", "")
        self.plateau_stopped = bool(state.get("plateau_stopped", False))
        self.skipped_steps = int(state.get("skipped_steps", 0))
