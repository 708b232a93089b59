"""Checkpoints: atomic writes, every RNG state, safe loading, and what a training checkpoint holds.

A checkpoint is written to a temporary file in the same directory, fsynced and renamed over
the old one, so a crash mid-write leaves the previous checkpoint intact. Everything in it is
a tensor or a plain container, so it loads with ``torch.load(weights_only=True)``.

A training checkpoint (``last.pt``, ``best.pt``) is one flat dict, written by
:func:`save_training_checkpoint` and read back by :func:`load_training_checkpoint` only:

- ``model``: the full, unsharded state dict (torchvision keys), whatever the parallel mode;
  ``spec``: the net's :class:`~verydeep.models.vgg.VGGSpec` as a dict; ``config``: the run's
  configuration; ``classes`` (wnids, in class-index order) and ``class_names`` (wnid -> name).
  These five are what evaluation reads (``verydeep.evaluate.checkpoints``).
- ``optimizer``: the optimiser state, data-parallel runs only (None otherwise); ``schedule``,
  ``scaler``: the LR schedule's and the loss scaler's state; ``rng``: every RNG state.
- the :class:`~verydeep.train.state.TrainState` fields (``epoch``, ``step``,
  ``batch_in_epoch``, ``best_top1_error``, ``bad_files``, ``stopped_because``,
  ``plateau_stopped``), and ``finished`` (the run had stopped when this was written).
- ``world_size``, ``parallel_mode``: how the run that wrote it was spread.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from verydeep.config import Config, config_to_dict
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


def atomic_save(obj: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"refused to load {path}: not a plain-tensor checkpoint ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: unreadable checkpoint ({e})") from None


def find_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run directory -> its ``best.pt`` (or ``last.pt``); a file -> itself."""
    path = Path(path)
    if path.is_dir():
        for name in (f"{which}.pt", "last.pt", "best.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"no {which}.pt or last.pt in run directory {path}")
    return path


# ----------------------------------------------------------------------------- training checkpoints


def save_training_checkpoint(path: str | Path, state: TrainState, *, weights: dict[str, torch.Tensor],
                             spec: VGGSpec, cfg: Config, classes: list[str], class_names: dict[str, str],
                             optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                             scaler: torch.amp.GradScaler, world_size: int, parallel_mode: str) -> Path:
    """Write the training checkpoint (the layout in the module docstring) atomically to ``path``.

    ``weights`` is the full state dict the strategy gathered on this rank (rank 0)."""
    return atomic_save({
        "model": weights,
        "spec": spec.to_dict(),
        "config": config_to_dict(cfg),
        "classes": list(classes),
        "class_names": dict(class_names),
        # Model-parallel optimiser state is sharded per rank (DTensors, stage-local tensors);
        # only the data-parallel state is complete on rank 0, so only it is kept.
        "optimizer": optimizer.state_dict() if parallel_mode == "data_parallel" else None,
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        **state.state_dict(),
        "rng": rng_state(),
        "world_size": world_size,
        "parallel_mode": parallel_mode,
        # An interrupted run is checkpointed before its reason is recorded: not finished.
        "finished": bool(state.stopped_because),
    }, path)


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


def load_training_checkpoint(path: str | Path) -> TrainingCheckpoint:
    raw = load_checkpoint(path)
    state = TrainState()
    state.load_state_dict(raw)
    return TrainingCheckpoint(weights=raw["model"], optimizer=raw.get("optimizer"), schedule=raw["schedule"],
                              scaler=raw["scaler"], rng=raw["rng"],
                              # written before pipeline and hybrid modes existed: data parallel
                              parallel_mode=raw.get("parallel_mode", "data_parallel"), state=state)
