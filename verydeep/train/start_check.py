"""What a run is checked for before anything is built or written: a known net, a pretrained
file that exists, and a usable dataset. Torch-free, so ``verydeep train`` with a typo in the net's name or the data path
answers at once, and before the run folder is claimed (a failed start leaves no folder)."""

from __future__ import annotations

from pathlib import Path

from verydeep.config import Config
from verydeep.errors import CheckpointNotFoundError
from verydeep.data.layouts import Splits, discover
from verydeep.models.registry import resolve


def check_start(cfg: Config) -> Splits:
    """The dataset's splits, once ``model.name`` is known to name a net (ValueError otherwise) and
    ``data`` to hold a dataset (DataError naming the folder otherwise)."""
    resolve(cfg.model.name)
    if cfg.model.pretrained and not Path(cfg.model.pretrained).exists():
        raise CheckpointNotFoundError(f"model.pretrained={cfg.model.pretrained}: no such file or run folder")
    return discover(cfg.data)
