"""`verydeep data check`: decode every image and list those that cannot be read."""

from __future__ import annotations

import os
from multiprocessing import get_context
from pathlib import Path

from verydeep.data.decode import is_image_name, load_image
from verydeep.data.errors import BadImageError


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


def image_files(folder) -> list[str]:
    """Every image file under ``folder`` (recursively), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_name(f) and not f.startswith("."))
    return out


def check_path(path, workers: int = 0, index_cache=None, progress: bool = True) -> dict:
    """Check a dataset root (train/ and val/ inside: layouts and labels are validated too) or
    any folder of images. Returns {"images": n, "bad": [(path, reason)], "summary": str|None}."""
    from verydeep.data.config import DataConfig
    from verydeep.data.layouts import discover

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        paths, summary = [str(path)], None
    elif (path / "train").is_dir() or (path / "val").is_dir() or (path / "ILSVRC").is_dir():
        splits = discover(DataConfig(root=str(path), index_cache=index_cache))
        paths, summary = [p for p, _ in splits.train] + [p for p, _ in splits.val], splits.summary()
    else:
        paths, summary = image_files(path), None
    bad = check_images(paths, workers=workers, progress=progress)
    return {"images": len(paths), "bad": bad, "summary": summary}
