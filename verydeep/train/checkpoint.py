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
- ``ema``: the moving average of the weights (``train.ema_decay``; model keys, like ``model``)
  and ``ema_updates``, its number of updates; None and 0 without EMA.
- ``world_size``, ``parallel_mode``: how the run that wrote it was spread; ``metrics_bytes``:
  how long ``metrics.jsonl`` was.

Integrity: every load checks the zip container's CRC-32s (``verydeep.safe_load``), so a
damaged file fails, naming itself, instead of training or evaluating on wrong weights.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from verydeep.config import Config, config_to_dict
from verydeep.errors import CheckpointError, CheckpointNotFoundError, OutputError
from verydeep.models.vgg import VGGSpec
from verydeep.safe_load import load_torch_file
from verydeep.train.schedules import LRSchedule
from verydeep.train.state import TrainState

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"  # atomic_save's temporary files: .<name>.<random>.tmp beside the checkpoint


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


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` sets it,
    for a moment, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_failure(path: Path, e: Exception) -> OutputError:
    """The one-line error of a checkpoint write the system refused (disk full, read-only, ...)."""
    if isinstance(e, OSError) and e.strerror:
        return OutputError(e.errno, f"cannot write checkpoint {path}: {e.strerror}")
    # torch.save reports a failed write as a RuntimeError ("PytorchStreamWriter failed writing
    # file ..."), without the errno: say how much room the disk has left.
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free on its disk"
    except OSError:
        free = ""
    reason = str(e).split(". ")[0].splitlines()[0]
    return OutputError(errno.EIO, f"cannot write checkpoint {path}: {reason}{free}")


def atomic_save(obj: dict, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsynced, then renamed over it: a
    crash at any point leaves either the old file or the new one. The file gets the mode a
    plain ``open`` would give it (0644 under the usual umask), not ``mkstemp``'s 0600."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as e:
        raise _write_failure(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, OutputError):
            raise _write_failure(path, e) from None
        raise
    return path


def remove_orphan_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files of writes a killed process never finished (``.last.pt.*.tmp``).
    Only while no process writes into ``folder``: the run folder's lock holder calls it."""
    removed = []
    for tmp in Path(folder).glob(f".*.pt.*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's dict, CRC-checked and loaded without running code (``verydeep.safe_load``)."""
    obj = load_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a verydeep checkpoint (holds a {type(obj).__name__})")
    return obj


def find_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run directory -> its ``best.pt`` (or ``last.pt``); a file -> itself."""
    path = Path(path)
    if path.is_dir():
        for name in (f"{which}.pt", "last.pt", "best.pt"):
            if (path / name).is_file():
                if name != f"{which}.pt":
                    log.warning("%s has no %s.pt (no validation finished yet?): using %s", path, which, name)
                return path / name
        raise CheckpointNotFoundError(f"no {which}.pt or last.pt in run directory {path}")
    return path


# ----------------------------------------------------------------------------- training checkpoints


def save_training_checkpoint(path: str | Path, state: TrainState, *, weights: dict[str, torch.Tensor],
                             spec: VGGSpec, cfg: Config, classes: list[str], class_names: dict[str, str],
                             optimizer: torch.optim.Optimizer, schedule: LRSchedule,
                             scaler: torch.amp.GradScaler, world_size: int, parallel_mode: str,
                             metrics_bytes: int = 0, ema: dict[str, torch.Tensor] | None = None,
                             ema_updates: int = 0) -> Path:
    """Write the training checkpoint (the layout in the module docstring) atomically to ``path``.

    ``weights`` is the full state dict the strategy gathered on this rank (rank 0);
    ``metrics_bytes``: the length of ``metrics.jsonl`` when it was written."""
    return atomic_save({
        "model": weights,
        "ema": ema,
        "ema_updates": int(ema_updates),
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
        # A resumed run cuts metrics.jsonl back to this length: the records a killed process
        # wrote after its last checkpoint are written again, once, by the resumed run.
        "metrics_bytes": int(metrics_bytes),
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


TRAINING_KEYS = ("model", "schedule", "scaler", "rng", "epoch", "step", "batch_in_epoch", "best_top1_error",
                 "bad_files")


def load_training_checkpoint(path: str | Path) -> TrainingCheckpoint:
    raw = load_checkpoint(path)
    missing = [k for k in TRAINING_KEYS if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (no {', '.join(missing)}): nothing to resume")
    state = TrainState()
    state.load_state_dict(raw)
    return TrainingCheckpoint(weights=raw["model"], optimizer=raw.get("optimizer"), schedule=raw["schedule"],
                              scaler=raw["scaler"], rng=raw["rng"],
                              # written before pipeline and hybrid modes existed: data parallel
                              parallel_mode=raw.get("parallel_mode", "data_parallel"), state=state,
                              config=raw.get("config") or {}, classes=list(raw.get("classes") or []),
                              metrics_bytes=raw.get("metrics_bytes"), ema=raw.get("ema"),
                              ema_updates=int(raw.get("ema_updates", 0)))
