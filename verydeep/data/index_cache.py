"""File index of an image folder, cached on disk and keyed on the folder's state.

Listing ImageNet's 1.28M training files takes minutes on network file systems; re-listing it
on every start is waste. The key is the modification time of the folder and of each of its
sub-folders (adding, removing or renaming a file changes its folder's mtime), so a changed
dataset is re-listed and an unchanged one is read back in about a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from verydeep.data.decode import is_image_name

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "verydeep" / "index"


@dataclass
class FolderIndex:
    """Image files of one folder: ``classes`` maps each sub-folder (sorted) to its sorted image
    file names; ``files`` are the sorted image files directly inside the folder."""

    path: str
    classes: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    from_cache: bool = False

    @property
    def num_images(self) -> int:
        return len(self.files) + sum(len(v) for v in self.classes.values())


def _stamp(path: Path) -> dict:
    top = os.stat(path).st_mtime_ns
    subs = {}
    with os.scandir(path) as it:
        for e in it:
            if e.is_dir(follow_symlinks=True) and not e.name.startswith("."):
                subs[e.name] = e.stat(follow_symlinks=True).st_mtime_ns
    return {"top": top, "subdirs": subs}


def _scan(path: Path, subdirs) -> FolderIndex:
    index = FolderIndex(str(path))
    with os.scandir(path) as it:
        index.files = sorted(e.name for e in it if not e.name.startswith(".") and e.is_file() and is_image_name(e.name))
    for name in sorted(subdirs):
        files = []
        for dirpath, dirnames, filenames in os.walk(path / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, path / name)
            files.extend(f if rel == "." else os.path.join(rel, f)
                         for f in filenames if not f.startswith(".") and is_image_name(f))
        index.classes[name] = sorted(files)
    return index


def scan_folder(path, cache_dir=None) -> FolderIndex:
    """The image files of ``path`` (a folder of class folders, or a flat folder), from the
    cache in ``cache_dir`` when the folder has not changed since it was written."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"not a folder: {path}")
    stamp = _stamp(path)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_file = cache_dir / (hashlib.sha1(str(path).encode()).hexdigest()[:20] + ".json")
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("version") == CACHE_VERSION and cached.get("path") == str(path) and cached.get("stamp") == stamp:
            return FolderIndex(str(path), cached["classes"], cached["files"], from_cache=True)
    except (OSError, ValueError, KeyError):
        pass
    index = _scan(path, stamp["subdirs"])
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "path": str(path), "stamp": stamp,
                                   "classes": index.classes, "files": index.files}))
        os.replace(tmp, cache_file)
    except OSError as e:
        log.debug("could not write the file index cache %s: %s", cache_file, e)
    return index
