"""Stage 2 of an evaluation, shared by ``verydeep eval`` and ``verydeep fuse``: a row's fused
posteriors from stored arrays (``fusion.mean_over_nets``), its top-5 classes and hits, its
line of the table.

Images are taken a chunk at a time (``CHUNK`` by default): the process holds the running sums
of one chunk (about 6 x chunk x K float32 values: see docs/evaluation.md) plus the per-image
results ([N, 5] classes and posteriors, [N, 2] hits), whatever N and the number of entries.

Distributed: each rank scores its own images and one all-reduce completes the per-image
results on every rank; undecodable images get no classes (-1) and no hits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from verydeep.evaluate.fusion import mean_over_nets
from verydeep.evaluate.posterior_store import PosteriorStore
from verydeep.parallel.distributed import all_reduce_sum
from verydeep.topk import topk_hits

CHUNK = 1024  # images fused at a time


@dataclass(frozen=True)
class StoredTerm:
    """One stored entry as a fusion reads it: in a reference image order (``rows``: each
    reference image's row in this store) and class order (``columns``); None: the same."""

    store: PosteriorStore
    name: str
    rows: np.ndarray | None = None
    columns: torch.Tensor | None = None

    def read(self, ids: np.ndarray) -> torch.Tensor:
        chunk = self.store.read(self.name, ids if self.rows is None else self.rows[ids])
        return chunk if self.columns is None else chunk[:, self.columns]


@dataclass
class Scores:
    """Per image: top-5 classes [N, 5] (-1: undecodable), their posteriors, top-1/top-5 hits
    [N, 2]; the fused posteriors [N, K] when asked for."""

    top5: torch.Tensor
    top5_prob: torch.Tensor
    hits: torch.Tensor
    posteriors: torch.Tensor | None = None


def score(nets: Sequence[Sequence[StoredTerm]], ids: Sequence[int], labels: torch.Tensor, num_classes: int,
          bad_mask: torch.Tensor, *, keep: bool = False, chunk: int = CHUNK) -> Scores:
    """Fuse (per image: the mean over ``nets`` of each net's mean over its terms) and score the
    images ``ids`` (this rank's decodable ones) of all N; collective under torchrun."""
    n, topn = labels.shape[0], min(5, num_classes)
    top = torch.zeros(n, topn, dtype=torch.float64)
    prob = torch.zeros(n, topn, dtype=torch.float64)
    hits = torch.zeros(n, 2, dtype=torch.float64)
    kept = torch.zeros(n, num_classes, dtype=torch.float32) if keep else None
    ids = np.asarray(sorted(ids), dtype=np.int64)
    for start in range(0, len(ids), chunk):
        part = ids[start: start + chunk]
        fused = mean_over_nets((term.read(part) for term in terms) for terms in nets)
        where = torch.from_numpy(part)
        pv, pi = fused.topk(topn, dim=1)
        top[where], prob[where] = pi.double(), pv.double()
        hits[where] = topk_hits(fused, labels[where], (1, 5)).double()
        if kept is not None:
            kept[where] = fused
    for t in (top, prob, hits) + ((kept,) if kept is not None else ()):
        all_reduce_sum(t)
    top[bad_mask] = -1
    return Scores(top.long(), prob.float(), hits.bool(), kept)


def table_row(hits: torch.Tensor, *, protocol: str, scales: Sequence[int], net_scales=None, seconds: float,
              bad_images: int, **extra) -> dict:
    """A line of the table: top-1 / top-5 error (%) over all N images, images per second."""
    n = hits.shape[0]
    c1, c5 = hits.sum(0).tolist()
    return {"protocol": protocol, "scales": [int(q) for q in scales],
            **({"net_scales": [list(q) for q in net_scales]} if net_scales else {}),
            "top1_error": 100.0 * (1 - c1 / n), "top5_error": 100.0 * (1 - c5 / n), "images": n,
            "images_per_s": n / seconds if seconds > 0 else float("nan"), "bad_images": bad_images, **extra}
