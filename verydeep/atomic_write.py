"""Whole-file writes that a reader, or a crash, never sees half done: write a temporary file
beside the target, then rename it over the target (atomic on POSIX file systems)."""

from __future__ import annotations

import os
from pathlib import Path


def plain_file_mode() -> int:
    """The mode ``open`` gives a new file under this process's umask (0644 under the usual 022),
    for files a library writes with its own, narrower mode. The umask is read without changing
    it where Linux allows (``os.umask`` sets it, for a moment, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` (its folder made if missing) in one rename; ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
