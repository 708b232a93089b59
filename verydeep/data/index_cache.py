"""File index of an image folder: every real directory walked once, cached on disk.

Listing ImageNet's 1.28M training files takes minutes on network file systems; re-listing it
on every start is waste. The cache is keyed on the modification time of every directory the
walk entered (adding, removing or renaming a file or folder changes its parent's mtime, at
any depth), so a changed dataset is re-listed and an unchanged one is read back after one
``stat`` per directory.

What that key cannot notice: a change that leaves every directory's mtime as it was (a file
added or removed with the folder's mtime restored, ``touch -d``/``rsync --times`` style), a
file rewritten in place (same name: the index holds names, not contents), and changes on
file systems with coarse or no directory mtimes. Deleting the cache folder (or pointing
``data.index_cache`` elsewhere) re-lists from scratch. The cache file itself carries a checksum and its names
are checked to stay inside the folder (``verydeep.data.checked_cache``): a damaged or edited
cache is rebuilt, with a warning naming it.

The walk follows symbolic links (datasets are often assembled from links) but enters each
real directory once: a link back up the tree (``loop -> ..``) or to a folder walked already
(another class's folder, say) would otherwise repeat its images, under another class's label.
Such links, and entries that are not regular files (a FIFO named ``x.JPEG`` would block its
reader forever), are skipped and reported as ``problems``: ``data check`` lists them, and
``discover`` warns.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from verydeep.data.checked_cache import InvalidCache, read_checked_json, relative_name, write_checked_json
from verydeep.data.decode import is_image_name

log = logging.getLogger(__name__)

CACHE_VERSION = 3


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "verydeep" / "index"


@dataclass
class FolderIndex:
    """Image files of one folder: ``classes`` maps each sub-folder (sorted) to its sorted image
    file names; ``files`` are the sorted image files directly inside the folder; ``problems``
    are (path, reason) of entries skipped (links to folders walked already, non-regular files,
    broken links)."""

    path: str
    classes: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    from_cache: bool = False

    @property
    def num_images(self) -> int:
        return len(self.files) + sum(len(v) for v in self.classes.values())


class _Walk:
    """One walk: the real directories entered (by device and inode), their mtimes, problems."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.seen: dict[tuple[int, int], str] = {}
        self.mtimes: dict[str, int] = {}
        self.problems: list[tuple[str, str]] = []

    def enter(self, path: Path, st: os.stat_result) -> bool:
        """Record directory ``path``; False (and a problem) if its real directory was entered already."""
        key = (st.st_dev, st.st_ino)
        if key in self.seen:
            reason = f"links to {self.seen[key]}, already indexed (symlink loop or duplicate folder): skipped"
            self.problems.append((str(path), reason))
            return False
        self.seen[key] = str(path)
        self.mtimes[os.path.relpath(path, self.top)] = st.st_mtime_ns
        return True

    def entries(self, folder: Path) -> tuple[list[tuple[Path, os.stat_result]], list[str]]:
        """(sub-folders with their stat, image file names) directly in ``folder``, sorted; hidden
        names ignored; other entries reported when they look like images."""
        dirs, files = [], []
        with os.scandir(folder) as it:
            listing = sorted(it, key=lambda e: e.name)
        for e in listing:
            if e.name.startswith("."):
                continue
            try:
                st = os.stat(e.path)  # follows links
            except OSError as err:
                self.problems.append((e.path, f"unreadable or broken link ({err.strerror}): skipped"))
                continue
            if stat.S_ISDIR(st.st_mode):
                dirs.append((Path(e.path), st))
            elif not is_image_name(e.name):
                continue
            elif stat.S_ISREG(st.st_mode):
                files.append(e.name)
            else:
                self.problems.append((e.path, "not a regular file (FIFO, socket or device): skipped"))
        return dirs, files

    def images_under(self, folder: Path) -> list[str]:
        """Image files under ``folder`` (entered already), as paths relative to it, sorted."""
        out = []
        stack = [folder]
        while stack:
            current = stack.pop()
            dirs, files = self.entries(current)
            rel = os.path.relpath(current, folder)
            out.extend(f if rel == "." else os.path.join(rel, f) for f in files)
            stack.extend(d for d, st in reversed(dirs) if self.enter(d, st))
        return sorted(out)


def _scan(path: Path) -> tuple[FolderIndex, dict[str, int]]:
    """The index of ``path`` and the mtimes of the directories walked (the cache key)."""
    walk = _Walk(path)
    walk.enter(path, os.stat(path))
    subdirs, files = walk.entries(path)
    # Every class folder is claimed before any is walked, so a link from one class into
    # another is skipped whichever comes first in sorted order; real folders are claimed
    # before links, so a class folder that is a link to another class folder (``n1 -> n3``)
    # is the one skipped, whichever name sorts first, and the real folder keeps its name.
    real = {d for d, _ in subdirs if not d.is_symlink()}
    claimed = {d for d, st in sorted(subdirs, key=lambda e: e[0] not in real) if walk.enter(d, st)}
    classes = [(d, st) for d, st in subdirs if d in claimed]
    index = FolderIndex(str(path), files=files)
    for d, _ in classes:
        index.classes[d.name] = walk.images_under(d)
    index.problems = walk.problems
    return index, walk.mtimes


def _unchanged(path: Path, mtimes: dict[str, int]) -> bool:
    try:
        return all(os.stat(path / rel).st_mtime_ns == t for rel, t in mtimes.items())
    except OSError:
        return False


def walk_images(folder) -> tuple[list[str], list[tuple[str, str]]]:
    """(every image file under ``folder``, as full paths, sorted; problems), uncached."""
    folder = Path(folder)
    walk = _Walk(folder)
    walk.enter(folder, os.stat(folder))
    return [os.path.join(folder, f) for f in walk.images_under(folder)], walk.problems


def _cached_index(cache_file: Path, path: Path) -> FolderIndex | None:
    """The index cached in ``cache_file`` for ``path`` when it is intact, checked and current;
    None (with a warning when the file was there but not trusted) for a rebuild."""
    try:
        cached = read_checked_json(cache_file)
        if cached.get("version") != CACHE_VERSION or cached.get("path") != str(path):
            return None  # another verydeep's cache, or (a hash collision) another folder's
        index = _checked_index(path, cached)
        return index if _unchanged(path, cached["mtimes"]) else None
    except FileNotFoundError:
        return None
    except (OSError, InvalidCache) as e:
        log.warning("%s: file index cache not used, rebuilding it: %s", cache_file, e)
        return None


def _checked_index(path: Path, cached: dict) -> FolderIndex:
    """The FolderIndex of a cache's content, every name checked to stay inside ``path``."""
    mtimes, classes, files, problems = (cached.get(k) for k in ("mtimes", "classes", "files", "problems"))
    if not isinstance(mtimes, dict) or not all(isinstance(t, int) and not isinstance(t, bool)
                                               for t in mtimes.values()):
        raise InvalidCache("mtimes must map folders to integer times")
    for rel in mtimes:
        if rel != ".":
            relative_name(rel, "mtimes")
    if not isinstance(classes, dict) or not all(isinstance(v, list) for v in classes.values()):
        raise InvalidCache("classes must map class folders to lists of file names")
    for c, names in classes.items():
        relative_name(c, "classes", single=True)
        for name in names:
            relative_name(name, f"classes[{c!r}]")
    if not isinstance(files, list):
        raise InvalidCache("files must be a list of file names")
    for name in files:
        relative_name(name, "files", single=True)
    if not isinstance(problems, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in problems):
        raise InvalidCache("problems must be a list of [path, reason]")
    return FolderIndex(str(path), classes, files, [tuple(p) for p in problems], from_cache=True)


def scan_folder(path, cache_dir=None) -> FolderIndex:
    """The image files of ``path`` (a folder of class folders, or a flat folder), from the
    cache in ``cache_dir`` when no directory under it changed since it was written."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"not a folder: {path}")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_file = cache_dir / (hashlib.sha1(str(path).encode()).hexdigest()[:20] + ".json")
    cached = _cached_index(cache_file, path)
    if cached is not None:
        return cached
    index, mtimes = _scan(path)
    try:
        write_checked_json(cache_file, {"version": CACHE_VERSION, "path": str(path), "mtimes": mtimes,
                                        "classes": index.classes, "files": index.files,
                                        "problems": index.problems})
    except OSError as e:
        log.debug("could not write the file index cache %s: %s", cache_file, e)
    return index
