"""The run folder (``--out``): one run in it, one process training there at a time.

A run folder holds one run's ``config.yaml``, ``last.pt``, ``best.pt``, ``metrics.jsonl``,
``curves.png`` and ``tensorboard/``. Before anything else, the training's rank 0 claims it:

- **a lock**: ``RUN/.lock`` is ``flock``-ed for as long as the process trains there, and says
  who holds it (pid, host, start time). A second training into the same folder fails at once
  and names the first. The kernel drops the lock when its holder dies, even by SIGKILL, so a
  stale lock never blocks a resume. (``flock`` is not shared between hosts on some network
  file systems: there, two hosts can still train into one folder.) The lock belongs to the
  training process alone: a ``flock`` is held by every copy of its file descriptor, and
  ``fork`` copies descriptors (``O_CLOEXEC`` only closes them at ``exec``), so every forked
  child (the loader's workers, a statistics pool) closes its copy at once
  (``os.register_at_fork``); otherwise workers orphaned by a SIGKILL would hold the lock for
  the seconds they take to notice, and an immediate ``--resume`` would be refused.
- **the start mode**: a new run refuses a folder that already holds a run unless told to
  replace it (``overwrite``); ``resume=True`` needs a ``last.pt`` to continue; ``resume="auto"``
  continues one if there is one and otherwise starts anew (a job script rerun after
  preemption). ``overwrite`` deletes only the run files named above, nothing else.
- **clean-up**: temporary files of checkpoint writes a killed process left (``.last.pt.*.tmp``).

Whether the checkpoint fits the run being resumed is checked later, once the data and the
configuration are known (``verydeep.train.resume_check``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from verydeep.errors import RunFolderError, UsageError
from verydeep.parallel.distributed import DistInfo, all_reduce_sum
from verydeep.checkpoint import remove_orphan_temporaries

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
RUN_FILES = ("last.pt", "best.pt", "config.yaml", "metrics.jsonl", "curves.png", "tensorboard")
RESUME_MODES = (False, True, "auto")


# Descriptors of the locks this process holds: a forked child closes its copies of them.
_held_lock_fds: set[int] = set()


def _close_lock_copies_in_child() -> None:
    for fd in _held_lock_fds:
        try:
            os.close(fd)  # the copy only: the parent's descriptor keeps the lock (no LOCK_UN here)
        except OSError:
            pass
    _held_lock_fds.clear()


os.register_at_fork(after_in_child=_close_lock_copies_in_child)


class RunFolderLock:
    """An exclusive ``flock`` on ``RUN/.lock``, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self._owner: int | None = None  # the pid that took the lock

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderError(f"{self.path.parent} is in use: {holder} is training there; wait for it to end, "
                                 f"stop it, or choose another --out") from None
        except BaseException:
            os.close(fd)
            raise
        # The file stays after release: deleting it would let a process that opened the old
        # file and one that creates a new one both hold "the" lock.
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode() + b"\n")
        self._fd, self._owner = fd, os.getpid()
        _held_lock_fds.add(fd)

    def release(self) -> None:
        if self._fd is not None and self._owner != os.getpid():
            self._fd = None  # a forked copy of this object: its descriptor is closed already
        if self._fd is not None:
            _held_lock_fds.discard(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"process {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError):
        return "another process"


@dataclass
class RunFolder:
    """A claimed run folder: ``resume`` says whether the run continues ``last.pt``."""

    path: Path
    resume: bool
    lock: RunFolderLock | None = None  # held by rank 0 only
    created: bool = False  # this start made the folder

    def release(self, failed: bool = False) -> None:
        """Unlock; after a ``failed`` start, remove the folder it made if it holds nothing but the lock."""
        if self.lock is not None:
            if failed and self.created:
                remove_if_only_lock(self.path)
            self.lock.release()


def remove_if_only_lock(run_dir: Path) -> None:
    """Delete ``run_dir`` when it holds only ``.lock`` (a start that failed before writing anything)."""
    try:
        if [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
            (run_dir / LOCK_NAME).unlink()
            run_dir.rmdir()
    except OSError:  # a file appeared, or the folder is not ours to remove: leave it
        pass


def present_run_files(run_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def remove_run_files(run_dir: Path) -> list[str]:
    """Delete the run files of ``run_dir`` (RUN_FILES only: anything else there stays)."""
    removed = present_run_files(run_dir)
    for name in removed:
        target = run_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    return removed


def decide_start(run_dir: Path, resume: bool | str, overwrite: bool) -> bool:
    """Whether the run continues ``run_dir/last.pt`` (True) or starts anew (False), clearing the
    folder where the mode allows it; RunFolderError where it does not."""
    if resume not in RESUME_MODES:
        raise UsageError(f"resume={resume!r}: expected False, True or 'auto'")
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other: continue the run, or replace it")
    has_last = (run_dir / "last.pt").is_file()
    if resume and has_last:
        return True
    if resume is True:
        raise RunFolderError(f"--resume: nothing to resume in {run_dir} (no last.pt); drop --resume to start a "
                             f"new run, or use --auto-resume to start one whenever there is nothing to resume")
    present = present_run_files(run_dir)
    if present and not (overwrite or resume == "auto"):
        raise RunFolderError(f"{run_dir} already holds a run ({', '.join(present)}): continue it with --resume, "
                             f"replace it with --overwrite, or choose another --out")
    if present:  # overwrite, or "auto" with no checkpoint: an earlier attempt's leftovers
        log.warning("%s: starting anew, deleted %s", run_dir, ", ".join(remove_run_files(run_dir)))
    return False


def _claim_on_main(run_dir: Path, resume: bool | str, overwrite: bool) -> RunFolder:
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunFolderError(f"--out {run_dir}: exists and is not a folder") from None
    lock = RunFolderLock(run_dir)
    lock.acquire()
    try:
        orphans = remove_orphan_temporaries(run_dir)
        if orphans:
            log.info("%s: removed %d unfinished checkpoint writes of a killed run (%s)", run_dir, len(orphans),
                     ", ".join(p.name for p in orphans))
        return RunFolder(run_dir, decide_start(run_dir, resume, overwrite), lock, created)
    except BaseException:
        RunFolder(run_dir, False, lock, created).release(failed=True)
        raise


def claim_run_folder(run_dir: Path, dist: DistInfo, *, resume: bool | str = False,
                     overwrite: bool = False) -> RunFolder:
    """Rank 0 makes, locks and checks the folder; every rank learns the outcome (collective)."""
    folder, error = None, None
    if dist.is_main:
        try:
            folder = _claim_on_main(run_dir, resume, overwrite)
        except Exception as e:  # noqa: BLE001 - shared with the other ranks first, then raised
            error = e
    # 0: refused, 1: a new run, 2: resume. Only rank 0 adds to the sum.
    code = 0 if error else (2 if folder and folder.resume else 1)
    code = int(all_reduce_sum(torch.tensor(code if dist.is_main else 0, device=dist.device)).item())
    if error is not None:
        raise error
    if code == 0:
        raise RunFolderError(f"rank 0 refused the run folder {run_dir} (its message says why)")
    return folder or RunFolder(run_dir, resume=code == 2)


def trim_metrics(path: Path, length: int | None) -> None:
    """Cut ``metrics.jsonl`` back to ``length`` bytes, its length when the checkpoint being
    resumed was written: what a killed process logged after it is logged again, once."""
    if length is None or not path.is_file() or path.stat().st_size <= length:
        return
    with open(path, "r+b") as f:
        f.truncate(length)
