"""Evaluate nets over a dataset: every (protocol, scale set) row, in two stages.

1. collect (``collect.collect``): each (net, method, Q)'s posteriors of every image, stored as
   an array [N, K] in a ``PosteriorStore`` (memory-mapped, float16 by default). Nets with the
   same preprocessing share one read of the data per test scale Q; one read at Q feeds dense
   and multi-crop together.
2. fuse and score (``scoring.score``): each row is, per image, the mean over nets of each
   net's mean over the entries (method x Q) it names, a chunk of images at a time; then top-5
   classes, hits and the line of the table. ``verydeep fuse`` runs the same stage over stores
   saved by ``--save-posteriors``.

A row is scored as soon as its last entry is stored (``on_row``). Distributed: every rank
collects and scores its shard; a coverage count proves that each image was evaluated exactly
once, one all-reduce completes the per-image results on every rank, and a kept store is
gathered onto rank 0. Undecodable images count as errors at every k and are reported by path.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from verydeep.evaluate import protocols
from verydeep.evaluate.checkpoints import EvalNet, as_eval_nets
from verydeep.evaluate.collect import Collection, check_coverage, collect, gather_to_main
from verydeep.evaluate.fusion import align_classes
from verydeep.evaluate.options import EvalOptions
from verydeep.evaluate.posterior_store import Entry, PosteriorStore
from verydeep.evaluate.scales import check_scales, net_scale_sets
from verydeep.evaluate.scoring import CHUNK, StoredTerm, score, table_row
from verydeep.parallel.distributed import current
from verydeep.runtime import Runtime


@dataclass(frozen=True)
class RowSpec:
    """One line of the results table: a protocol at a set of test scales Q.

    ``net_scales``: each net's own Q set, in the nets' order (the paper's ensembles test every
    net at the scales of its training S, Sec. 4.5); ``scales`` is then their union. None:
    every net at ``scales``. :meth:`for_nets` builds either from "single", "multi" or lists.
    """

    protocol: str
    scales: tuple[int, ...]
    net_scales: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        protocols.check_protocol(self.protocol)
        check_scales(self.scales)
        for own in self.net_scales or ():
            check_scales(own)

    @classmethod
    def for_nets(cls, protocol: str, nets_data: Sequence, which) -> RowSpec:
        """A row for nets trained with ``nets_data`` (their ``DataConfig``s): ``which`` is
        "single" / "multi" (each net's own Q from its own training S), one list of Q for
        every net, or one list per net. Nets that all get the same Q make a plain row."""
        per_net = tuple(tuple(q) for q in net_scale_sets(nets_data, which))
        if len(set(per_net)) == 1:
            return cls(protocol, per_net[0])
        return cls(protocol, tuple(sorted(set().union(*per_net))), per_net)

    def scales_of(self, net: int) -> tuple[int, ...]:
        return self.scales if self.net_scales is None else self.net_scales[net]

    def entries_of(self, net: int) -> list[Entry]:
        """The stored posteriors net ``net`` contributes to the row: its (method, Q) passes."""
        methods = protocols.methods_of(self.protocol)
        return [Entry(net, method, int(q)) for q in self.scales_of(net) for method in methods]

    def entries(self, nets: int) -> list[Entry]:
        return [e for net in range(nets) for e in self.entries_of(net)]

    def check_nets(self, count: int) -> None:
        if self.net_scales is not None and len(self.net_scales) != count:
            raise ValueError(f"the row gives test scales for {len(self.net_scales)} nets but {count} are evaluated")


@dataclass
class RowResult:
    """A row of the table plus the per-image detail behind it (indices are sample indices)."""

    row: dict
    top5: torch.Tensor  # [N, k] class indices, best first (-1 for undecodable images)
    top5_prob: torch.Tensor  # [N, k]
    hits: torch.Tensor  # [N, 2] bool: top-1, top-5 correct
    labels: torch.Tensor  # [N]
    posteriors: torch.Tensor | None = None  # [N, K] fused posteriors (zeros: undecodable); kept on request


@dataclass
class EvalResult:
    results: list[RowResult]
    classes: list[str] | None
    class_names: dict[str, str]
    samples: Sequence
    bad: list[tuple[int, str]] = field(default_factory=list)
    store: Path | None = None  # the kept posterior store (``save_posteriors``)

    @property
    def rows(self) -> list[dict]:
        return [r.row for r in self.results]


def sample_labels(samples: Sequence, num_classes: int) -> torch.Tensor:
    labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.long)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), found {labels.min().item()}..{labels.max().item()}")
    return labels


def score_ready_rows(collection: Collection, *, rows: list[RowSpec], nets: list[EvalNet], store: PosteriorStore,
                     labels: torch.Tensor, options: EvalOptions, keep: bool, scored: dict[int, RowResult],
                     on_row: Callable[[int, RowResult], None] | None, final: bool = False) -> list[tuple[int, str]]:
    """Stage 2 for the rows whose entries are all stored (collective: every rank calls it after
    the same reads); ``final``: the last call, which warns about undecodable images. Returns
    every rank's undecodable images."""
    ready = [i for i, spec in enumerate(rows) if i not in scored and set(spec.entries(len(nets))) <= collection.done]
    if not ready and not final:
        return []
    bad_mask, bad, seconds = check_coverage(collection, labels.shape[0], warn=final)
    good = sorted(collection.shard - set(collection.bad))
    for i in ready:
        spec = rows[i]
        terms = [[StoredTerm(store, e.name) for e in spec.entries_of(j)] for j in range(len(nets))]
        scores = score(terms, good, labels, store.num_classes, bad_mask, keep=keep)
        row = table_row(scores.hits, protocol=spec.protocol, scales=spec.scales, net_scales=spec.net_scales,
                        seconds=sum(seconds[(m, q)] for q in spec.scales for m in protocols.methods_of(spec.protocol)),
                        bad_images=int(bad_mask.sum()), flip=options.flip, nets=[net.source for net in nets],
                        **({"dense_average": options.dense_average}
                           if "dense" in protocols.methods_of(spec.protocol) else {}))
        scored[i] = RowResult(row=row, top5=scores.top5, top5_prob=scores.top5_prob, hits=scores.hits,
                              labels=labels, posteriors=scores.posteriors)
        if on_row is not None:
            on_row(i, scored[i])
    return bad


@torch.no_grad()
def evaluate_rows(nets, data_cfg, samples: Sequence, rows: Sequence[RowSpec], *,
                  classes: Sequence[str] | None = None, options: EvalOptions | None = None,
                  runtime: Runtime | None = None, keep_posteriors: bool = False,
                  on_row: Callable[[int, RowResult], None] | None = None,
                  save_posteriors: str | Path | None = None) -> EvalResult:
    """Evaluate one or several nets (fusion) on ``samples`` [(path, label)] for every row.

    ``classes``: the dataset's class ids, in label order; each net's outputs are mapped onto
    it by class id (nets without class ids must already share the dataset's order).
    ``runtime``: device, AMP and memory format, built once per process by the caller; by
    default from ``options.device`` and ``options.amp`` for this process's rank.
    ``keep_posteriors``: each row's full [N, K] posteriors in ``RowResult.posteriors`` (on
    every rank). ``save_posteriors``: a folder to keep the store of stage 1 in, with every
    image's entries (on rank 0) and the rows (for ``verydeep fuse``); otherwise the store is
    temporary (under ``$TMPDIR``) and removed at the end.
    ``on_row(index, result)``: each row as soon as its last read is done (reads go by
    ascending Q, so single-scale rows come before multi-scale ones), e.g. to write partial
    results; called on every rank. Without it every row is scored after the last read.
    """
    options = options or EvalOptions()
    nets = as_eval_nets(nets, data_cfg)
    rows = [r if isinstance(r, RowSpec) else RowSpec(r[0], tuple(r[1])) for r in rows]
    if not rows:
        raise ValueError("nothing to evaluate: no (protocol, scales) rows given")
    if len(samples) == 0:
        raise ValueError("nothing to evaluate: the sample list is empty")
    num_classes, reference, perms = align_classes(nets, classes)
    labels = sample_labels(samples, num_classes)
    runtime = runtime or options.runtime(current().local_rank)
    for spec in rows:
        spec.check_nets(len(nets))
    names = next((net.class_names for net in nets if net.class_names), {})
    keep_store = save_posteriors is not None and current().is_main
    store = PosteriorStore.create(save_posteriors if keep_store else tempfile.mkdtemp(prefix="verydeep-posteriors-"),
                                  classes=reference, class_names=names, samples=samples, num_classes=num_classes,
                                  nets=[net.source for net in nets], dtype=options.posteriors_dtype)
    try:
        scored: dict[int, RowResult] = {}
        stage2 = functools.partial(score_ready_rows, rows=rows, nets=nets, store=store, labels=labels,
                                   options=options, keep=keep_posteriors, scored=scored, on_row=on_row)
        entries = list(dict.fromkeys(e for spec in rows for e in spec.entries(len(nets))))
        collection = collect(nets, perms, data_cfg, samples, entries, store, options, runtime,
                             after_read=stage2 if on_row else None)
        bad = stage2(collection, final=True)
        if save_posteriors is not None:
            gather_to_main(store, [e.name for e in entries], CHUNK)
            store.index["undecodable"] = [i for i, _ in bad]
            store.index["rows"] = [{"row": scored[i].row, "nets": [[e.name for e in spec.entries_of(j)]
                                                                   for j in range(len(nets))]}
                                   for i, spec in enumerate(rows)]
            if keep_store:
                store.write_index()
    finally:
        if not keep_store:
            store.remove()
    return EvalResult(results=[scored[i] for i in range(len(rows))], classes=reference, class_names=names,
                      samples=samples, bad=bad, store=store.folder if keep_store else None)


def evaluate(models_or_checkpoints, data_cfg, samples: Sequence, *, protocol: str = "center",
             scales: Sequence[int] | str = "single", classes: Sequence[str] | None = None,
             options: EvalOptions | None = None, runtime: Runtime | None = None) -> dict:
    """One row of the paper's table: ``protocol`` at test scales ``scales``.

    ``models_or_checkpoints``: a VGG, a checkpoint path / run directory, an ``EvalNet``, or a
    list of these (fusion: posteriors averaged). ``scales``: a list of Q for every net, one
    list per net, or "single" / "multi": the paper's sets from each net's own training scale
    S (``resolve_scales``).
    Returns a dict with ``protocol``, ``scales``, ``top1_error``, ``top5_error`` (percent),
    ``images``, ``images_per_s``, ``bad_images``.
    """
    nets = as_eval_nets(models_or_checkpoints, data_cfg)
    spec = RowSpec.for_nets(protocol, [net.data for net in nets], scales)
    return evaluate_rows(nets, data_cfg, samples, [spec], classes=classes, options=options,
                         runtime=runtime).rows[0]
