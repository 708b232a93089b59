"""The paper-style results table, JSON rows, per-image predictions and per-class accuracy."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from verydeep.topk import per_class_accuracy


def _scales(row: dict) -> str:
    return ",".join(str(q) for q in row["scales"])


def format_table(rows: list[dict], title: str | None = None) -> str:
    """Protocol, test scales Q, top-1 / top-5 error (%), images, images/s: one line per row."""
    head = f"{'protocol':<17} {'test scale Q':<16} {'top-1 err (%)':>13} {'top-5 err (%)':>13} {'images':>8} {'images/s':>9}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for r in rows:
        ips = r["images_per_s"]
        lines.append(f"{r['protocol']:<17} {_scales(r):<16} {r['top1_error']:>13.2f} {r['top5_error']:>13.2f} "
                     f"{r['images']:>8d} {'-' if math.isnan(ips) else f'{ips:.1f}':>9}")
    bad = max((r.get("bad_images", 0) for r in rows), default=0)
    if bad:
        lines.append(f"({bad} undecodable images counted as errors in every row)")
    return "\n".join(lines)


def write_json(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    return path


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
