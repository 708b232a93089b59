"""The paper-style results table, the JSON report, per-image predictions and per-class accuracy.

The JSON report (``eval --json``, the demo's ``eval.json``) is ``{"header": ..., "rows": [...]}``:
the header says what was evaluated and with what (package versions, date, data, each
checkpoint as given with its path and SHA-256, preprocessing, scales, options) and whether
the evaluation is complete; rows carry rounded figures (errors to 0.001 percentage points,
speeds to 0.1 image/s), so the file reads like the table and diffs cleanly.
"""

from __future__ import annotations

import csv
import datetime
import errno
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

from verydeep.atomic_write import write_text_atomic
from verydeep.errors import OutputError
from verydeep.topk import per_class_accuracy


def _scales(row: dict) -> str:
    return ",".join(str(q) for q in row["scales"])


FLIP_NOTE = {
    True: "every row averages each image's posteriors with its mirror's (flip); --no-flip scores the image "
          "alone, as training's validation does (center at its Q gives the same error)",
    False: "no flip averaging (--no-flip): each image alone, as training's validation scores it",
}


def format_table(rows: list[dict], title: str | None = None, flip: bool | None = None) -> str:
    """Protocol, test scales Q, top-1 / top-5 error (%), images, images/s: one line per row.
    ``flip``: whether the rows averaged each image with its mirror, said under the title."""
    head = f"{'protocol':<17} {'test scale Q':<16} {'top-1 err (%)':>13} {'top-5 err (%)':>13} {'images':>8} {'images/s':>9}"
    lines = [title] if title else []
    lines += [f"({FLIP_NOTE[flip]})"] if flip is not None else []
    lines += [head, "-" * len(head)]
    for r in rows:
        ips = r["images_per_s"]
        lines.append(f"{r['protocol']:<17} {_scales(r):<16} {r['top1_error']:>13.2f} {r['top5_error']:>13.2f} "
                     f"{r['images']:>8d} {'-' if math.isnan(ips) else f'{ips:.1f}':>9}")
    bad = max((r.get("bad_images", 0) for r in rows), default=0)
    if bad:
        lines.append(f"({bad} undecodable images counted as errors in every row)")
    return "\n".join(lines)


# Decimal places kept in the JSON report, per row field.
ROUNDING = {"top1_error": 3, "top5_error": 3, "images_per_s": 1}


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def report_header(nets, given: list[str], *, data_root, images: int, scales: list, options=None,
                  ema: bool = False, device=None) -> dict:
    """What an evaluation ran on: versions, date, data, checkpoints (as given, resolved path,
    SHA-256), each net's preprocessing, the test scales (as given and as Q) and the options.
    ``device``: the device used (``auto`` resolved), recorded instead of the option as given."""
    import torch

    from verydeep import __version__

    header = {
        "verydeep": __version__,
        "torch": torch.__version__.split("+")[0],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": {"root": os.path.abspath(data_root) if data_root else None, "images": images},
        "checkpoints": [{"given": str(g), "path": os.path.abspath(n.source),
                         "sha256": file_sha256(n.source) if os.path.isfile(n.source) else None,
                         "weights": "ema" if ema else "model"} for g, n in zip(given, nets)],
        "preprocessing": [n.preprocessing() for n in nets],
        "scales": scales,
    }
    if options is not None:
        header["options"] = {"flip": options.flip, "dense_average": options.dense_average,
                             "device": str(device if device is not None else options.device),
                             "amp": options.amp,
                             "precision": options.runtime().precision()}
    return header


def report_row(row: dict, given: list[str] | None = None) -> dict:
    """A table row for the JSON report: figures rounded, ``nets`` as the user gave them."""
    out = {}
    for key, value in row.items():
        if isinstance(value, float):
            value = None if math.isnan(value) else round(value, ROUNDING.get(key, 6))
        out[key] = value
    if given is not None:
        out["nets"] = [str(g) for g in given]
    return out


def check_output_file(path: str | Path, flag: str) -> Path:
    """Refuse, in one line (``OutputError``, exit 7), an output file that cannot be written: a
    folder where the file should be, a parent that is a file, a read-only place. Writes nothing
    but a probe, removed at once (the parent folder is created)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder, not a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise NotADirectoryError(errno.ENOTDIR, "a file stands where its folder should be") from None
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-check-"):
            pass
    except OSError as e:
        raise OutputError(e.errno or errno.EIO, f"{flag} {path}: cannot write it: {e.strerror or e}") from None
    return path


def write_report(path: str | Path, header: dict, rows: list[dict], *, complete: bool = True,
                 given: list[str] | None = None) -> Path:
    """Write (or rewrite, atomically) the JSON report; ``complete=False`` while rows are still to come."""
    report = {"header": {**header, "status": "complete" if complete else "running"},
              "rows": [report_row(r, given) for r in rows]}
    return write_text_atomic(path, json.dumps(report, indent=2) + "\n")


def write_json(rows: list[dict], path: str | Path, header: dict | None = None) -> Path:
    """The JSON report of finished ``rows`` (see the module docstring)."""
    return write_report(path, header or {}, rows)


def _class_id(result, idx: int) -> str:
    if idx < 0:
        return ""
    return result.classes[idx] if result.classes else str(idx)


def write_per_image(result, path: str | Path) -> Path:
    """One line per image and row: path, true class, top-5 classes and posteriors, hits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "path", "label", "protocol", "scales", "prediction", "top1_correct",
                    "top5_correct", "top5", "top5_prob", "undecodable"])
        for r in result.results:
            scales = _scales(r.row)
            for i, (sample_path, label) in enumerate(result.samples):
                top = [_class_id(result, j) for j in r.top5[i].tolist()]
                w.writerow([i, sample_path, _class_id(result, int(label)), r.row["protocol"], scales,
                            top[0], int(r.hits[i, 0]), int(r.hits[i, 1]), " ".join(top),
                            " ".join(f"{p:.5f}" for p in r.top5_prob[i].tolist()), int(top[0] == "")])
    return path


def write_per_class(result, path: str | Path) -> Path:
    """Per class: id, name, images, then top-1 / top-5 accuracy (%) for every row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    k = len(result.classes) if result.classes else int(result.results[0].labels.max()) + 1
    cols = []
    count = None
    for r in result.results:
        a1, count = per_class_accuracy(r.hits[:, 0], r.labels, k)
        a5, _ = per_class_accuracy(r.hits[:, 1], r.labels, k)
        cols.append((f"{r.row['protocol']} Q={_scales(r.row)}", a1, a5))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "name", "images"] + [f"{name} top{j} acc" for name, *_ in cols for j in (1, 5)])
        for c in range(k):
            cid = _class_id(result, c)
            cells = [f"{100 * a[c].item():.2f}" if not math.isnan(a[c].item()) else ""
                     for _, a1, a5 in cols for a in (a1, a5)]
            w.writerow([cid, result.class_names.get(cid, ""), int(count[c])] + cells)
    return path
