"""Stored posteriors: what stage 1 of an evaluation collects and stage 2 fuses and scores.

A store is a folder: one ``<entry>.npy`` array [N images, K classes] per entry, the
posteriors of one net by one method at one test scale Q (``Entry``), in the store's class
order (columns) and image order (rows), and ``index.json``: the format, the dtype, the class
ids and names, the sample paths, the labels, the undecodable images, the nets, the entries and
the table rows (each row names the entries it averages, per net). Arrays are written and read
memory-mapped, a batch or a chunk of images at a time (so the process holds only that much of
them), in ``float32`` by default (``float16`` on request, half the disk: ``DTYPES``). ``np.load`` runs with
``allow_pickle=False``: reading a store cannot run code.

``PosteriorStore.open`` checks everything before it is used and ends in one line per fault
(``CheckpointError``, exit 4): a missing or unparsable index, wrong types, labels outside the
store's own class list, entry files that are not plain arrays of the stated shape and dtype;
non-finite posteriors are refused when read, naming the file and the entry.
"""

from __future__ import annotations

import errno
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from verydeep.atomic_write import write_text_atomic
from verydeep.errors import CheckpointError, CheckpointNotFoundError, OutputError, UsageError
from verydeep.evaluate.protocols import METHODS

FORMAT = "verydeep-posterior-store/1"
INDEX = "index.json"
DTYPES = ("float16", "float32")
# float32: the tables equal those of float32 sums bit for bit. float16 halves the disk but rounds
# a posterior by up to 2**-11 of itself, enough to swap near-tied classes (measured: two classes
# 3e-5 apart at 0.17 swap ranks in tests/evaluate/test_pinned_tables.py).
DEFAULT_DTYPE = "float32"


class Entry(NamedTuple):
    """One stored array: net ``net``'s posteriors by ``method`` at test scale ``scale``."""

    net: int
    method: str
    scale: int

    @property
    def name(self) -> str:
        return f"net{self.net}-{self.method}-Q{self.scale}"


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise UsageError(f"posteriors dtype {dtype!r}: choose {' or '.join(DTYPES)}")
    return dtype


def check_folder(folder: str | Path) -> Path:
    """Refuse, in one line (``OutputError``), a place a new store cannot go: a file, a folder
    holding anything but an earlier store (which a new one replaces), a place the system will
    not write. Creates the folder; writes nothing else."""
    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise OutputError(errno.ENOTDIR, f"{folder}: a file, not a folder for stored posteriors")
        if folder.is_dir() and any(folder.iterdir()) and not (folder / INDEX).is_file():
            raise OutputError(errno.EEXIST, f"{folder}: a folder holding other files; stored posteriors need "
                                            "an empty folder or an earlier store")
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(e.errno or errno.EIO, f"{folder}: cannot write stored posteriors there: "
                                                f"{e.strerror or e}") from None
    return folder


class PosteriorStore:
    """A folder of stored posteriors (see the module docstring)."""

    def __init__(self, folder: Path, index: dict, *, check_finite: bool = False) -> None:
        self.folder, self.index, self.check_finite = folder, index, check_finite

    # --- writing (stage 1) ---------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, *, classes: Sequence[str] | None, class_names: dict,
               samples: Sequence, num_classes: int, nets: Sequence[str], dtype: str = DEFAULT_DTYPE
               ) -> PosteriorStore:
        index = {"format": FORMAT, "dtype": check_dtype(dtype), "images": len(samples), "num_classes": int(num_classes),
                 "classes": list(classes) if classes is not None else None, "class_names": dict(class_names),
                 "samples": [str(s[0]) for s in samples], "labels": [int(s[1]) for s in samples],
                 "undecodable": [], "nets": list(nets), "entries": {}, "rows": []}
        store = cls(check_folder(folder), index)
        for old in store.folder.glob("*.npy"):  # an earlier store's
            old.unlink()
        store.write_index()
        return store

    def add(self, entry: Entry) -> None:
        """Create ``entry``'s array (zeros: rows not yet written read as zeros)."""
        from numpy.lib.format import open_memmap

        file = f"{entry.name}.npy"
        array = open_memmap(self.folder / file, mode="w+", dtype=self.dtype, shape=(self.images, self.num_classes))
        del array  # flushed and unmapped: the process keeps none of it
        self.index["entries"][entry.name] = {"net": entry.net, "method": entry.method, "scale": entry.scale,
                                             "file": file}

    def write(self, name: str, rows: Sequence[int], posteriors: torch.Tensor) -> None:
        """Rows ``rows`` of entry ``name``: one batch, mapped for the write and unmapped after it."""
        array = self._array(name, "r+")
        array[np.asarray(rows, dtype=np.int64)] = posteriors.detach().float().cpu().numpy().astype(self.dtype)
        del array  # unmapped: the pages go to the page cache, written back by the kernel (no msync per batch)

    def write_index(self) -> Path:
        return write_text_atomic(self.folder / INDEX, json.dumps(self.index) + "\n")

    # --- reading (stage 2) ---------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | Path) -> PosteriorStore:
        """A store written earlier, checked; every fault is one ``CheckpointError`` line."""
        folder = Path(folder)
        if not (folder / INDEX).is_file():
            what = "a file" if folder.is_file() else "no such folder" if not folder.exists() else f"no {INDEX}"
            raise CheckpointNotFoundError(f"{folder}: not a posterior store ({what}); give a folder written by "
                                          "verydeep eval --save-posteriors")
        try:
            index = json.loads((folder / INDEX).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{folder / INDEX}: unreadable ({e})") from None
        store = cls(folder, index, check_finite=True)
        store._check()
        return store

    def _check(self) -> None:
        where, ix = self.folder / INDEX, self.index
        if not isinstance(ix, dict) or ix.get("format") != FORMAT:
            raise CheckpointError(f"{where}: not a posterior store index (format {FORMAT} expected)")
        n, k = ix.get("images"), ix.get("num_classes")
        if not (_int(n) and n > 0 and _int(k) and k > 0) or ix.get("dtype") not in DTYPES:
            raise CheckpointError(f"{where}: images, num_classes must be positive integers and dtype one of "
                                  f"{', '.join(DTYPES)}")
        classes = ix.get("classes")
        if classes is not None and (not _strings(classes) or len(classes) != k or len(set(classes)) != k):
            raise CheckpointError(f"{where}: classes must be {k} distinct class ids")
        if not isinstance(ix.get("class_names"), dict):
            raise CheckpointError(f"{where}: class_names must be a mapping")
        if not _strings(ix.get("samples")) or len(ix["samples"]) != n:
            raise CheckpointError(f"{where}: samples must be {n} image paths")
        for key in ("labels", "undecodable"):
            values = ix.get(key)
            if not isinstance(values, list) or not all(_int(v) for v in values):
                raise CheckpointError(f"{where}: {key} must be a list of integers")
        if len(ix["labels"]) != n:
            raise CheckpointError(f"{where}: {len(ix['labels'])} labels for {n} images")
        bad = next((i for i, v in enumerate(ix["labels"]) if not 0 <= v < k), None)
        if bad is not None:
            raise CheckpointError(f"{where}: label {ix['labels'][bad]} of {ix['samples'][bad]} is outside the "
                                  f"store's {k} classes [0, {k})")
        if any(not 0 <= i < n for i in ix["undecodable"]):
            raise CheckpointError(f"{where}: undecodable lists an image outside [0, {n})")
        self._check_entries()

    def _check_entries(self) -> None:
        where, ix = self.folder / INDEX, self.index
        if not (_strings(ix.get("nets")) and isinstance(ix.get("entries"), dict) and isinstance(ix.get("rows"), list)):
            raise CheckpointError(f"{where}: nets, entries and rows must be lists / a mapping")
        for name, e in ix["entries"].items():
            if not (isinstance(e, dict) and e.get("file") == f"{name}.npy" and e.get("method") in METHODS
                    and _int(e.get("scale")) and _int(e.get("net")) and 0 <= e["net"] < len(ix["nets"])
                    and Entry(e["net"], e["method"], e["scale"]).name == name):
                raise CheckpointError(f"{where}: entry {name!r} is malformed")
            array = self._array(name, "r")
            if array.shape != (self.images, self.num_classes) or array.dtype != np.dtype(self.dtype):
                raise CheckpointError(f"{self.folder / e['file']}: holds {array.dtype} {array.shape}, the index "
                                      f"says {self.dtype} ({self.images}, {self.num_classes})")
            del array
        for i, row in enumerate(ix["rows"]):
            table = row.get("row") if isinstance(row, dict) else None
            if not (isinstance(table, dict) and isinstance(table.get("protocol"), str)
                    and isinstance(table.get("scales"), list) and isinstance(row.get("nets"), list) and row["nets"]
                    and all(isinstance(net, list) and net and all(name in ix["entries"] for name in net)
                            for net in row["nets"])):
                raise CheckpointError(f"{where}: row #{i} is malformed or names entries the store does not hold")

    def _array(self, name: str, mode: str) -> np.ndarray:
        path = self.folder / f"{name}.npy"
        try:
            return np.load(path, mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise CheckpointError(f"{path}: not a stored posterior array ({e})") from None

    def read(self, name: str, rows: np.ndarray) -> torch.Tensor:
        """Rows ``rows`` of entry ``name`` as float32 [len(rows), K]; mapped for this read only."""
        array = self._array(name, "r")
        chunk = torch.from_numpy(np.asarray(array[rows], dtype=np.float32))
        del array
        if self.check_finite and not torch.isfinite(chunk).all():
            image = self.samples[int(rows[int((~torch.isfinite(chunk)).any(1).nonzero()[0])])]
            raise CheckpointError(f"{self.folder / (name + '.npy')}: entry {name} holds non-finite posteriors "
                                  f"(image {image})")
        return chunk

    # --- what the index says -------------------------------------------------------------

    @property
    def images(self) -> int:
        return self.index["images"]

    @property
    def num_classes(self) -> int:
        return self.index["num_classes"]

    @property
    def dtype(self) -> str:
        return self.index["dtype"]

    @property
    def classes(self) -> list[str] | None:
        return self.index["classes"]

    @property
    def samples(self) -> list[str]:
        return self.index["samples"]

    @property
    def rows(self) -> list[dict]:
        return self.index["rows"]

    def labels(self) -> torch.Tensor:
        return torch.tensor(self.index["labels"], dtype=torch.long)

    def undecodable(self) -> torch.Tensor:
        mask = torch.zeros(self.images, dtype=torch.bool)
        mask[self.index["undecodable"]] = True
        return mask

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(values) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)

