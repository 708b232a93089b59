"""`verydeep data check`: decode every image and list those that cannot be read."""

from __future__ import annotations

import os
from multiprocessing import get_context
from pathlib import Path

from verydeep.data.decode import load_image
from verydeep.data.errors import BadImageError
from verydeep.data.index_cache import walk_images


def _check_one(path: str) -> tuple[str, str | None]:
    try:
        load_image(path)
        return path, None
    except BadImageError as e:
        return path, e.reason


def check_images(paths, workers: int = 0, progress: bool = True, desc: str = "checking images") -> list[tuple[str, str]]:
    """Fully decode each file; returns (path, reason) of every one that fails, in input order."""
    from verydeep.progress import progress_bar

    paths = [str(p) for p in paths]
    bar = progress_bar(total=len(paths), desc=desc, unit="img", disable=not progress)
    results = {}
    if workers > 0 and len(paths) > 64:
        with get_context("fork" if os.name == "posix" else "spawn").Pool(workers) as pool:
            for path, reason in pool.imap_unordered(_check_one, paths, chunksize=32):
                results[path] = reason
                bar.update()
    else:
        for p in paths:
            results[p] = _check_one(p)[1]
            bar.update()
    bar.close()
    return [(p, results[p]) for p in paths if results[p] is not None]


def check_path(path, workers: int = 0, index_cache=None, progress: bool = True) -> dict:
    """Check a dataset root (train/ and val/ inside: layouts and labels are validated too) or
    any folder of images. Returns {"images": n, "bad": [(path, reason)], "summary": str|None};
    ``bad`` also lists what the file index skipped: symlink loops and links to folders indexed
    already (their images would be counted twice, possibly under another class), non-regular
    files and broken links."""
    from verydeep.data.config import DataConfig
    from verydeep.data.layouts import discover

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        paths, summary, skipped = [str(path)], None, []
    elif not path.is_dir():
        paths, summary, skipped = [], None, [(str(path), "not a regular file (FIFO, socket or device)")]
    elif (path / "train").is_dir() or (path / "val").is_dir() or (path / "ILSVRC").is_dir():
        splits = discover(DataConfig(root=str(path), index_cache=index_cache))
        paths, summary = [p for p, _ in splits.train] + [p for p, _ in splits.val], splits.summary()
        skipped = list(splits.problems)
    else:
        paths, skipped = walk_images(path)
        summary = None
    bad = check_images(paths, workers=workers, progress=progress)
    return {"images": len(paths), "bad": [*skipped, *bad], "summary": summary}
