"""Checkpoints: atomic writes, every RNG state, and safe loading.

A checkpoint is written to a temporary file in the same directory, fsynced and renamed over
the old one, so a crash mid-write leaves the previous checkpoint intact. Everything in it is
a tensor or a plain container, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


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
