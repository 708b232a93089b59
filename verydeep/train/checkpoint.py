"""A training checkpoint's ``train`` part: what a resume needs besides the weights, and every RNG state.

The file itself (layout, atomic write, integrity checks, the flat layout of verydeep 0.1) is
``verydeep.checkpoint``'s; here the run's objects (TrainState, optimiser, schedule, scaler,
RNGs) become the plain dict stored under ``train`` and come back from it.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from verydeep import checkpoint
from verydeep.config import Config, config_to_dict
from verydeep.errors import CheckpointError
from verydeep.models.vgg import VGGSpec
from verydeep.train.schedules import LRSchedule
from verydeep.train.state import TrainState

log = logging.getLogger(__name__)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------- training checkpoints


def save_training_checkpoint(path: str | Path, state: TrainState, *, weights: dict[str, torch.Tensor],
                             spec: VGGSpec, cfg: Config, classes: list[str], class_names: dict[str, str],
                             optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                             scaler: torch.amp.GradScaler, world_size: int, parallel_mode: str,
                             metrics_bytes: int = 0, ema: dict[str, torch.Tensor] | None = None,
                             ema_updates: int = 0) -> Path:
    """Write the training checkpoint (``verydeep.checkpoint``'s layout) atomically to ``path``.

    ``weights`` is the full state dict the strategy gathered on this rank (rank 0);
    ``metrics_bytes``: the length of ``metrics.jsonl`` when it was written."""
    train = {
        # Model-parallel optimiser state is sharded per rank (DTensors, stage-local tensors);
        # only the data-parallel state is complete on rank 0, so only it is kept.
        "optimizer": optimizer.state_dict() if parallel_mode == "data_parallel" else None,
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        **state.state_dict(),
        # An interrupted run is checkpointed before its reason is recorded: not finished.
        "finished": bool(state.stopped_because),
        "ema_updates": int(ema_updates),
        "world_size": world_size,
        "parallel_mode": parallel_mode,
        # A resumed run cuts metrics.jsonl back to this length: the records a killed process
        # wrote after its last checkpoint are written again, once, by the resumed run.
        "metrics_bytes": int(metrics_bytes),
    }
    return checkpoint.save(path, weights, spec=spec.to_dict(), config=config_to_dict(cfg), classes=list(classes),
                           class_names=dict(class_names), ema=ema, train=train)


@dataclass
class TrainingCheckpoint:
    """A training checkpoint as read back for ``--resume``."""

    weights: dict[str, torch.Tensor]  # full and unsharded: any parallel mode resumes from any other
    optimizer: dict | None
    schedule: dict
    scaler: dict
    rng: dict
    parallel_mode: str
    state: TrainState
    config: dict  # the run's configuration, as written (``--resume`` compares it with today's)
    classes: list[str]  # wnids in class-index order
    metrics_bytes: int | None  # metrics.jsonl's length at the checkpoint; None: not recorded
    ema: dict[str, torch.Tensor] | None = None  # the weights' moving average (train.ema_decay)
    ema_updates: int = 0

    def restore(self, *, optimizer: torch.optim.Optimizer, schedule: LRSchedule, scaler: torch.amp.GradScaler,
                parallel_mode: str) -> TrainState:
        """Load the optimiser, schedule, scaler and RNG states (the weights go into the model
        before it is spread over the ranks); the loop's state to continue from."""
        if self.parallel_mode == parallel_mode == "data_parallel":
            optimizer.load_state_dict(self.optimizer)
        else:
            log.warning("resuming %s from a %s checkpoint: weights restored, optimiser state (momentum) restarts",
                        parallel_mode, self.parallel_mode)
        schedule.load_state_dict(self.schedule)
        scaler.load_state_dict(self.scaler)
        set_rng_state(self.rng)
        return self.state


TRAINING_KEYS = ("schedule", "scaler", "rng", "epoch", "step", "batch_in_epoch", "best_top1_error", "bad_files")


def load_training_checkpoint(path: str | Path) -> TrainingCheckpoint:
    """``path`` read and checked by ``verydeep.checkpoint.load`` (non-finite weights refused: a
    resume from them would only diverge again), with the training state a resume needs."""
    ckpt = checkpoint.load(path)
    train = ckpt.train or {}
    missing = [k for k in TRAINING_KEYS if k not in train]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (no {', '.join(missing)}): nothing to resume")
    state = TrainState()
    state.load_state_dict(train)
    return TrainingCheckpoint(weights=ckpt.weights, optimizer=train.get("optimizer"), schedule=train["schedule"],
                              scaler=train["scaler"], rng=train["rng"],
                              # written before pipeline and hybrid modes existed: data parallel
                              parallel_mode=train.get("parallel_mode", "data_parallel"), state=state,
                              config=ckpt.config or {}, classes=list(ckpt.classes or []),
                              metrics_bytes=train.get("metrics_bytes"), ema=ckpt.ema,
                              ema_updates=int(train.get("ema_updates", 0)))
