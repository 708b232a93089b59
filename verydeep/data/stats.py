"""`verydeep data stats`: the training set's mean RGB and colour PCA (Krizhevsky et al. 2012).

The paper subtracts the mean RGB of the training set and shifts colours along the principal
components of its RGB pixels. Both are estimated here from a seeded sample of training images,
each rescaled to a small shorter side first (colour statistics do not depend on resolution,
and decoding at 1/8 size is fast). Units: pixels in [0, 1]. ``pca_eigval`` are the
eigenvalues of the 3x3 covariance, largest first; the columns of ``pca_eigvec`` are the
matching eigenvectors (the layout DataConfig expects).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from verydeep.atomic_write import write_text_atomic
from verydeep.data.checked_cache import InvalidCache, read_checked_json, write_checked_json
from verydeep.data.config import TRAINING_SET_STATS, DataConfig
from verydeep.data.decode import load_image
from verydeep.data.errors import BadImageError, DataError
from verydeep.data.index_cache import default_cache_dir
from verydeep.data.transforms import checked_stats, dataset_stats, resized_size

log = logging.getLogger(__name__)

STATS_KEYS = ("mean", "std", "pca_eigval", "pca_eigvec")


def _moments(args) -> tuple[np.ndarray, np.ndarray, int] | None:
    path, short = args
    try:
        img = load_image(path, short)
    except BadImageError:
        return None
    img = img.resize(resized_size(img.width, img.height, short))
    x = np.asarray(img, dtype=np.float64).reshape(-1, 3) / 255.0
    return x.sum(0), x.T @ x, len(x)


def compute_stats(paths, num_images: int = 10000, seed: int = 0, short_side: int = 64, workers: int = 0,
                  progress: bool = True) -> dict:
    """Mean, std and PCA of the RGB pixels of ``num_images`` images drawn (seeded) from ``paths``."""
    from verydeep.progress import progress_bar

    paths = list(paths)
    if not paths:
        raise DataError("no images to compute statistics from")
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.choice(len(paths), size=min(num_images, len(paths)), replace=False))]
    s, ss, n, used, bad = np.zeros(3), np.zeros((3, 3)), 0, 0, 0
    jobs = [(p, short_side) for p in chosen]
    bar = progress_bar(total=len(jobs), desc="pixel statistics", unit="img", disable=not progress)
    pool = get_context("fork" if os.name == "posix" else "spawn").Pool(workers) if workers > 0 else None
    try:
        results = pool.imap(_moments, jobs, chunksize=16) if pool else map(_moments, jobs)
        for r in results:
            bar.update()
            if r is None:
                bad += 1
                continue
            s += r[0]
            ss += r[1]
            n += r[2]
            used += 1
    finally:
        bar.close()
        if pool:
            pool.close()
    if n == 0:
        raise DataError("none of the sampled images could be decoded")
    mean = s / n
    cov = ss / n - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    eigvec = eigvec * np.where(eigvec.sum(0) < 0, -1.0, 1.0)  # a stable sign convention
    return {
        "mean": mean.tolist(),
        "std": np.sqrt(np.diag(cov)).tolist(),
        "pca_eigval": eigval.tolist(),
        "pca_eigvec": eigvec.tolist(),
        "images": used,
        "unreadable": bad,
        "pixels": int(n),
        "short_side": short_side,
        "seed": seed,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_stats(stats: dict, path) -> None:
    write_text_atomic(path, json.dumps(stats, indent=2) + "\n")


def training_set_stats(paths, cache_dir=None, progress: bool = True) -> dict:
    """:func:`compute_stats` of the training images ``paths`` with its defaults, computed once
    and cached under ``cache_dir`` (the file index's cache), keyed on the file list."""
    paths = list(paths)
    key = hashlib.sha1("\n".join(paths).encode()).hexdigest()[:20]
    cache_file = Path(cache_dir or default_cache_dir()) / f"stats-{key}.json"
    try:
        cached = read_checked_json(cache_file)
        missing = [k for k in STATS_KEYS if k not in cached]
        if missing:
            raise InvalidCache(f"missing {', '.join(missing)}")
        return {**cached, **checked_stats(cached)}
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:  # InvalidCache, or values checked_stats refuses
        log.warning("%s: training-set statistics cache not used, recomputing it: %s", cache_file, e)
    log.info("computing the training set's mean RGB and colour PCA (once; cached in %s)", cache_file)
    stats = compute_stats(paths, progress=progress)
    try:
        write_checked_json(cache_file, stats, indent=2)
    except OSError as e:  # a read-only cache costs a recomputation next time, nothing more
        log.warning("could not cache the training-set statistics in %s: %s", cache_file, e)
    return stats


def resolve_stats(cfg: DataConfig, train_paths=None, progress: bool = True) -> DataConfig:
    """``cfg`` with its mean, std and PCA as values and ``stats_file`` cleared, so a run's saved
    config and checkpoints carry the statistics themselves, not a path to them.

    ``stats_file="train"`` takes the training set's own (``train_paths``; computed once and
    cached); a JSON path takes that file's; None keeps ``cfg`` as it is."""
    if not cfg.stats_file:
        return cfg
    if cfg.stats_file == TRAINING_SET_STATS:
        if not train_paths:
            raise DataError("data.stats_file=train needs the training images to compute the mean RGB from")
        stats = training_set_stats(train_paths, cfg.index_cache, progress)
    else:
        stats = dataset_stats(cfg)
    values = {k: [list(map(float, r)) for r in stats[k]] if k == "pca_eigvec" else [float(v) for v in stats[k]]
              for k in STATS_KEYS}
    return dataclasses.replace(cfg, stats_file=None, **values)
