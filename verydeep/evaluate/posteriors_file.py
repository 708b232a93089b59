"""Saved per-image posteriors: ``verydeep eval --save-posteriors FILE`` writes every row's full
K-way posteriors, ``verydeep fuse`` averages files (fusion, Sec. 4.5) without re-running nets.

A file is safetensors (no pickle: loading it cannot run code): ``labels`` [N] int64,
``undecodable`` [N] uint8 and one ``row<i>`` [N, K] float32 per evaluated row (zeros for
undecodable images); its header holds the class ids (the column order), the sample paths (the
row order) and each row's table entry (protocol, test scales, nets, errors).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from verydeep.evaluate.evaluator import EvalResult, score_images
from verydeep.evaluate.fusion import PosteriorAverage, class_permutation

FORMAT = "verydeep-posteriors/1"


def save_posteriors(result: EvalResult, path: str | Path) -> Path:
    """Write ``result``'s rows (evaluated with ``keep_posteriors=True``) to ``path``."""
    if any(r.posteriors is None for r in result.results):
        raise ValueError("these results hold no posteriors: evaluate with keep_posteriors=True")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = result.results[0]
    tensors = {"labels": first.labels.long().contiguous(),
               "undecodable": (first.top5[:, 0] < 0).to(torch.uint8).contiguous()}
    tensors.update({f"row{i}": r.posteriors.float().contiguous() for i, r in enumerate(result.results)})
    meta = {"format": FORMAT, "classes": list(result.classes) if result.classes else None,
            "class_names": result.class_names, "samples": [str(s[0]) for s in result.samples],
            "rows": [r.row for r in result.results]}
    save_file(tensors, str(path), metadata={"verydeep": json.dumps(meta)})
    return path


@dataclass
class SavedPosteriors:
    """One row of a posteriors file."""

    source: str  # FILE or FILE#ROW
    posteriors: torch.Tensor  # [N, K]
    labels: torch.Tensor  # [N]
    undecodable: torch.Tensor  # [N] bool
    classes: list[str] | None
    samples: list[str]
    row: dict


def load_posteriors(spec: str | Path) -> SavedPosteriors:
    """``FILE`` (a file with one row) or ``FILE#ROW`` (its row number ROW, from 0)."""
    path, _, index = str(spec).partition("#")
    if not Path(path).is_file():
        raise FileNotFoundError(f"posteriors file not found: {path}")
    with safe_open(path, framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("verydeep", "{}"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a posteriors file written by verydeep eval --save-posteriors")
        rows = meta["rows"]
        if not index and len(rows) != 1:
            listing = "; ".join(f"#{i}: {r['protocol']} Q={','.join(map(str, r['scales']))}" for i, r in enumerate(rows))
            raise ValueError(f"{path} holds {len(rows)} rows; name one as {path}#ROW ({listing})")
        i = int(index or 0)
        if not 0 <= i < len(rows):
            raise ValueError(f"{path}: no row #{i} (it holds {len(rows)})")
        return SavedPosteriors(source=str(spec), posteriors=f.get_tensor(f"row{i}"), labels=f.get_tensor("labels"),
                               undecodable=f.get_tensor("undecodable").bool(), classes=meta.get("classes"),
                               samples=meta["samples"], row=rows[i])


def sample_order(saved: SavedPosteriors, reference: SavedPosteriors) -> torch.Tensor | None:
    """Rows of ``saved`` in ``reference``'s image order (None: already the same order)."""
    if saved.samples == reference.samples:
        return None
    where = {p: i for i, p in enumerate(saved.samples)}
    missing = [p for p in reference.samples if p not in where]
    if missing or len(saved.samples) != len(reference.samples):
        raise ValueError(f"{saved.source} and {reference.source} hold different images "
                         f"(e.g. {(missing or saved.samples)[:3]}): fusion needs the same evaluation set")
    return torch.tensor([where[p] for p in reference.samples], dtype=torch.long)


def fuse_saved(items: Sequence[SavedPosteriors]) -> tuple[dict, torch.Tensor]:
    """Average the posteriors of ``items`` (in the first one's image and class order) and score
    them: (table row, fused posteriors [N, K]). An image undecodable in any input counts as an
    error, as in the evaluator."""
    if not items:
        raise ValueError("nothing to fuse: no posteriors files given")
    reference = items[0]
    average = PosteriorAverage()
    undecodable = torch.zeros_like(reference.undecodable)
    for saved in items:
        rows = sample_order(saved, reference)
        posteriors = saved.posteriors if rows is None else saved.posteriors[rows]
        perm = class_permutation(saved.classes, reference.classes, source=saved.source)
        average.add(posteriors if perm is None else posteriors[:, perm])
        undecodable |= saved.undecodable if rows is None else saved.undecodable[rows]
    fused = average.mean()
    n, k = fused.shape
    good = (~undecodable).nonzero().flatten().tolist()
    _, _, hits = score_images(fused[good] if good else None, good, reference.labels, k, undecodable)
    c1, c5 = hits.sum(0).tolist()
    row = {"protocol": "fusion: " + " + ".join(sorted({s.row["protocol"] for s in items})),
           "scales": sorted({q for s in items for q in s.row["scales"]}),
           "net_scales": [list(s.row["scales"]) for s in items],
           "top1_error": 100.0 * (1 - c1 / n), "top5_error": 100.0 * (1 - c5 / n), "images": n,
           "images_per_s": float("nan"), "bad_images": int(undecodable.sum()),
           "nets": [net for s in items for net in s.row.get("nets", [s.source])], "fused_files": [s.source for s in items]}
    return row, fused
