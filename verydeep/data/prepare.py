"""`verydeep data prepare SRC DST --max-short-side 512`: a resized copy of a dataset.

The paper never needs a shorter side above 512 (S <= 512, Q <= 512), and ImageNet's average
image is about 400x350 with a long tail of multi-megapixel files; capping the shorter side
makes every later epoch cheaper. The layout is kept file for file (same relative paths and
names, so labels and ground-truth files stay valid); label and mapping files are copied;
images already small enough are copied byte for byte; unreadable files are copied unchanged
(so `verydeep data check` still reports them) and listed. Re-running skips finished files.
"""

from __future__ import annotations

import os
import shutil
from multiprocessing import get_context
from pathlib import Path

from PIL import Image

from verydeep.data.decode import is_image_name, load_image
from verydeep.data.errors import BadImageError
from verydeep.data.transforms import resized_size


def _prepare_one(args) -> tuple[str, str]:
    src, dst, max_short, quality = args
    if os.path.exists(dst) and os.stat(dst).st_mtime >= os.stat(src).st_mtime:
        return "skipped", src
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not is_image_name(src):
        shutil.copy2(src, dst)
        return "copied", src
    try:
        with Image.open(src) as probe:
            w, h = probe.size
        if min(w, h) <= max_short:
            shutil.copy2(src, dst)
            return "copied", src
        img = load_image(src, max_short)
        img = img.resize(resized_size(w, h, max_short), Image.Resampling.LANCZOS, reducing_gap=3.0)
        tmp = f"{dst}.tmp{os.getpid()}"
        img.save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, dst)
        return "resized", src
    except (BadImageError, OSError, Image.UnidentifiedImageError, SyntaxError, ValueError):
        shutil.copy2(src, dst)
        return "bad", src


def prepare_dataset(src, dst, max_short_side: int = 512, quality: int = 90, workers: int = 0,
                    progress: bool = True) -> dict:
    """Copy ``src`` to ``dst`` with every image's shorter side capped at ``max_short_side``."""
    from verydeep.progress import progress_bar

    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder")
    if dst == src or src in dst.parents:
        raise ValueError(f"destination {dst} must not be inside the source {src}")
    if max_short_side < 1:
        raise ValueError(f"max_short_side must be positive, got {max_short_side}")
    jobs = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, src)
        for f in sorted(filenames):
            if not f.startswith("."):
                jobs.append((os.path.join(dirpath, f), os.path.join(dst, rel, f), max_short_side, quality))
    counts = {"resized": 0, "copied": 0, "skipped": 0, "bad": 0}
    bad = []
    bar = progress_bar(total=len(jobs), desc=f"prepare (shorter side <= {max_short_side})", unit="file",
                       disable=not progress)
    pool = get_context("fork" if os.name == "posix" else "spawn").Pool(workers) if workers > 0 else None
    try:
        for status, path in (pool.imap_unordered(_prepare_one, jobs, chunksize=32) if pool else map(_prepare_one, jobs)):
            counts[status] += 1
            if status == "bad":
                bad.append(path)
            bar.update()
    finally:
        bar.close()
        if pool:
            pool.close()
    return {"files": len(jobs), **counts, "bad_files": sorted(bad), "dst": str(dst)}
