"""Fusion of saved posteriors (``verydeep fuse``, the reproduction's Table 6): rows and entries
of posterior stores (``eval --save-posteriors DIR``) averaged without running the nets again.

A member is ``DIR`` (a store holding one row), ``DIR#ROW`` (its row number ROW, from 0) or
``DIR#ENTRY`` (one stored entry, e.g. ``net0-dense-Q384``). The fusion is stage 2 of an
evaluation (``scoring.score``) over every net the members name: per image, the mean over nets
of each net's mean over its entries, in the first member's image and class order (other
stores are aligned by sample path and class id). An image undecodable in any store counts as
an error. Every fault of a store (``PosteriorStore.open``) or between stores (other images,
other classes, other labels) ends in one ``CheckpointError`` line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from verydeep.errors import CheckpointError
from verydeep.evaluate.fusion import class_permutation
from verydeep.evaluate.posterior_store import PosteriorStore
from verydeep.evaluate.scoring import CHUNK, Scores, StoredTerm, score, table_row


@dataclass
class Member:
    """One argument of ``fuse``: the store, the entries per net it names, its table entry."""

    given: str
    store: PosteriorStore
    nets: list[list[str]]
    protocol: str
    scales: list[int]
    sources: list[str]


def member(given: str, opened: dict[str, PosteriorStore]) -> Member:
    folder, _, pick = given.partition("#")
    store = opened.get(folder) or opened.setdefault(folder, PosteriorStore.open(folder))
    rows, entries = store.rows, store.index["entries"]
    if not pick:
        if len(rows) != 1:
            listing = "; ".join(f"#{i}: {r['row']['protocol']} Q={','.join(map(str, r['row']['scales']))}"
                                for i, r in enumerate(rows)) or f"entries: {', '.join(entries)}"
            raise CheckpointError(f"{folder} holds {len(rows)} rows; name one as {folder}#ROW or {folder}#ENTRY "
                                  f"({listing})")
        pick = "0"
    if pick.isdigit():
        if int(pick) >= len(rows):
            raise CheckpointError(f"{folder}: no row #{pick} (it holds {len(rows)})")
        row = rows[int(pick)]
        return Member(given, store, row["nets"], row["row"]["protocol"], list(row["row"]["scales"]),
                      list(row["row"].get("nets") or [folder]))
    if pick not in entries:
        raise CheckpointError(f"{folder}: no row or entry {pick!r} (entries: {', '.join(entries)})")
    e = entries[pick]
    return Member(given, store, [[pick]], e["method"], [e["scale"]], [store.index["nets"][e["net"]]])


def align(store: PosteriorStore, reference: PosteriorStore) -> tuple[np.ndarray | None, torch.Tensor | None]:
    """(each reference image's row in ``store``, ``store``'s columns in the reference's class
    order); None where they are the same. Refuses stores of other images, classes or labels."""
    if store.num_classes != reference.num_classes:
        raise CheckpointError(f"{store.folder} has {store.num_classes} classes, {reference.folder} "
                              f"{reference.num_classes}: fusion needs the same classes")
    try:
        columns = class_permutation(store.classes, reference.classes, source=str(store.folder))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    rows = None
    if store.samples != reference.samples:
        where = {p: i for i, p in enumerate(store.samples)}
        missing = [p for p in reference.samples if p not in where]
        if missing or len(store.samples) != len(reference.samples):
            raise CheckpointError(f"{store.folder} and {reference.folder} hold different images "
                                  f"(e.g. {(missing or store.samples)[:3]}): fusion needs the same evaluation set")
        rows = np.array([where[p] for p in reference.samples], dtype=np.int64)
    labels = store.labels() if rows is None else store.labels()[torch.from_numpy(rows)]
    mine = [class_ids(store)[i] for i in labels.tolist()]
    theirs = [class_ids(reference)[i] for i in reference.labels().tolist()]
    if mine != theirs:
        i = next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)
        raise CheckpointError(f"{store.folder} labels {reference.samples[i]} {mine[i]}, {reference.folder} "
                              f"{theirs[i]}: fusion needs the same labels")
    return rows, columns


def class_ids(store: PosteriorStore) -> list[str]:
    return store.classes or [str(k) for k in range(store.num_classes)]


def fuse_stores(given: Sequence[str], *, keep: bool = False, chunk: int = CHUNK) -> tuple[dict, list[dict], Scores]:
    """(the fused row, each member's own row, the fused per-image scores) of the members
    ``given``; ``keep``: the fused posteriors [N, K] in the scores."""
    if not given:
        raise CheckpointError("nothing to fuse: no posterior stores given")
    opened: dict[str, PosteriorStore] = {}
    members = [member(g, opened) for g in given]
    reference = members[0].store
    undecodable = reference.undecodable()
    terms: list[list[list[StoredTerm]]] = []
    for m in members:
        rows, columns = align(m.store, reference)
        undecodable |= m.store.undecodable() if rows is None else m.store.undecodable()[torch.from_numpy(rows)]
        terms.append([[StoredTerm(m.store, name, rows, columns) for name in net] for net in m.nets])
    good = (~undecodable).nonzero().flatten().tolist()
    labels, k, bad = reference.labels(), reference.num_classes, int(undecodable.sum())
    own = [table_row(score(t, good, labels, k, undecodable, chunk=chunk).hits, protocol=f"{m.protocol} ({m.given})",
                     scales=m.scales, seconds=0.0, bad_images=bad, nets=m.sources) for m, t in zip(members, terms)]
    fused = score([net for t in terms for net in t], good, labels, k, undecodable, keep=keep, chunk=chunk)
    row = table_row(fused.hits, protocol="fusion: " + " + ".join(sorted({m.protocol for m in members})),
                    scales=sorted({q for m in members for q in m.scales}), seconds=0.0, bad_images=bad,
                    net_scales=[m.scales for m in members], nets=[s for m in members for s in m.sources],
                    fused=list(given))
    return row, own, fused
