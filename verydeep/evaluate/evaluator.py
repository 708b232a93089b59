"""Run evaluation protocols over a dataset: every (protocol, scale set) row in one sweep.

Three stages:

1. collect (``PosteriorCollector``): nets with the same preprocessing form a group that shares
   every read of the data. Per group and test scale Q the data is read once: the centre-crop
   read feeds ``center``, the whole-image read feeds ``dense`` and ``multicrop`` together.
   Each pass (method, Q) keeps per-image posteriors summed over the group's nets.
2. fuse (``fuse_row``): a row's posterior per image is the average over its passes and all
   nets (``fusion.PosteriorAverage``): multi-scale, dense + multi-crop and fusion at once.
3. score (``score_images``, ``table_row``): top-5 classes and hits per image, error rates.

Distributed: every rank evaluates its shard. ``combine_shards`` proves with a per-image
coverage count (all-reduced) that each image was evaluated exactly once (an error otherwise)
and gathers undecodable images and timings; ``score_images`` sums per-image results into
full-size vectors with one all-reduce, so every rank ends with the same rows. Undecodable
images are counted as errors at every k and reported by path.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.distributed as tdist
from torch import nn

from verydeep.data import build_eval_loader
from verydeep.evaluate import protocols
from verydeep.evaluate.checkpoints import EvalNet, as_eval_nets
from verydeep.evaluate.crops import GRID, crops_per_image
from verydeep.evaluate.fusion import PosteriorAverage, class_permutation
from verydeep.evaluate.options import EvalOptions
from verydeep.evaluate.scales import check_scales, resolve_scales
from verydeep.parallel.distributed import all_reduce_sum, current
from verydeep.progress import progress_bar
from verydeep.runtime import Runtime
from verydeep.topk import topk_hits

log = logging.getLogger(__name__)


class Pass(NamedTuple):
    """One method at one test scale: what one read of the data computes for a group of nets."""

    method: str
    scale: int


@dataclass(frozen=True)
class RowSpec:
    """One line of the results table: a protocol at a set of test scales Q."""

    protocol: str
    scales: tuple[int, ...]

    def __post_init__(self) -> None:
        protocols.check_protocol(self.protocol)
        check_scales(self.scales)

    @property
    def passes(self) -> list[Pass]:
        return [Pass(method, int(q)) for q in self.scales for method in protocols.methods_of(self.protocol)]


@dataclass
class RowResult:
    """A row of the table plus the per-image detail behind it (indices are sample indices)."""

    row: dict
    top5: torch.Tensor  # [N, k] class indices, best first (-1 for undecodable images)
    top5_prob: torch.Tensor  # [N, k]
    hits: torch.Tensor  # [N, 2] bool: top-1, top-5 correct
    labels: torch.Tensor  # [N]


@dataclass
class EvalResult:
    results: list[RowResult]
    classes: list[str] | None
    class_names: dict[str, str]
    samples: Sequence
    bad: list[tuple[int, str]] = field(default_factory=list)

    @property
    def rows(self) -> list[dict]:
        return [r.row for r in self.results]


# --- checks before any work ------------------------------------------------------------------

def align_classes(nets: list[EvalNet], classes: Sequence[str] | None
                  ) -> tuple[int, list[str] | None, list[torch.Tensor | None]]:
    """(number of classes, the class order to report in, each net's permutation onto it).

    The order is ``classes`` (the dataset's) or else the first net's; nets without class ids
    must already predict in it.
    """
    num_classes = {net.model.spec.num_classes for net in nets}
    if len(num_classes) != 1:
        raise ValueError(f"cannot fuse nets with different numbers of classes: {sorted(num_classes)}")
    (k,) = num_classes
    reference = list(classes) if classes is not None else nets[0].classes
    if reference is not None and len(reference) != k:
        raise ValueError(f"the data has {len(reference)} classes but the net predicts {k}")
    return k, reference, [class_permutation(net.classes, reference, source=net.source) for net in nets]


def sample_labels(samples: Sequence, num_classes: int) -> torch.Tensor:
    labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.long)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), found {labels.min().item()}..{labels.max().item()}")
    return labels


# --- stage 1: collect posteriors per (pass, net group) ---------------------------------------

def group_by_preprocessing(nets: list[EvalNet]) -> list[list[int]]:
    """Indices of nets that see identical inputs, so that they share every read of the data."""
    groups: dict[str, list[int]] = {}
    for i, net in enumerate(nets):
        groups.setdefault(net.preprocessing_key(), []).append(i)
    return list(groups.values())


def plan_reads(passes: Sequence[Pass], crop_size: int) -> dict[tuple[int, int | None], list[str]]:
    """The reads of the data the passes need, (Q, loader crop) -> the methods each one feeds."""
    reads: dict[tuple[int, int | None], list[str]] = {}
    for method, q in passes:
        reads.setdefault((q, protocols.input_crop(method, q, crop_size)), []).append(method)
    return reads


def _loader_config(data_cfg, net: EvalNet):
    """The dataset's loader settings with the net's own preprocessing (normalisation, crop)."""
    if data_cfg is None:
        return net.data
    keep = {k: getattr(net.data, k) for k in net.preprocessing_keys if hasattr(data_cfg, k)}
    return dataclasses.replace(data_cfg, **keep)


class ShardPosteriors:
    """Per-image posteriors of this rank's shard (each a sum of ``count``), filled batch by
    batch in the loader's order and read back by sample index."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._ids: list[int] = []
        self._chunks: list[torch.Tensor] = []
        self._row_of: dict[int, int] | None = None

    def put(self, ids: list[int], posteriors: torch.Tensor) -> None:
        self._ids.extend(ids)
        self._chunks.append(posteriors.cpu())
        self._row_of = None

    def get(self, ids: list[int]) -> torch.Tensor:
        # The chunks are joined on the first read after a put, not on every read.
        if self._row_of is None:
            self._row_of = {i: r for r, i in enumerate(self._ids)}
            self._chunks = [torch.cat(self._chunks)]
        return self._chunks[0][torch.tensor([self._row_of[i] for i in ids], dtype=torch.long)]


@dataclass
class Collected:
    """This rank's share of the sweep, as the collect stage leaves it."""

    groups: list[list[int]]  # net indices per preprocessing group
    sums: dict[tuple[Pass, int], ShardPosteriors]  # (pass, group) -> summed over the group's nets
    seconds: dict[Pass, float]  # data reading and forward time per pass, in sweep order
    shard: set[int] = field(default_factory=set)  # sample indices this rank read
    bad: dict[int, str] = field(default_factory=dict)  # undecodable: sample index -> path


@dataclass
class _PreparedGroup:
    index: int
    models: list[tuple[nn.Module, torch.Tensor | None]]  # (prepared model, class permutation)
    crop_size: int


class PosteriorCollector:
    """Stage 1: run every pass with every net over this rank's shard of the samples."""

    def __init__(self, options: EvalOptions, runtime: Runtime) -> None:
        self.options, self.runtime, self.dist = options, runtime, current()
        self.crop_batch = options.crop_batch or max(crops_per_image(GRID, options.flip), 4 * options.batch_size)

    def collect(self, nets: list[EvalNet], perms: list[torch.Tensor | None], data_cfg,
                samples: Sequence, passes: Sequence[Pass]) -> Collected:
        groups = group_by_preprocessing(nets)
        out = Collected(groups=groups, seconds=dict.fromkeys(passes, 0.0),
                        sums={(p, g): ShardPosteriors(len(members))
                              for p in passes for g, members in enumerate(groups)})
        shard: set[int] | None = None
        for g, members in enumerate(groups):
            lead = nets[members[0]]
            group = _PreparedGroup(g, [(self.runtime.prepare_model(nets[i].model).eval(), perms[i])
                                       for i in members], int(lead.data.crop_size))
            for (q, crop), methods in plan_reads(passes, group.crop_size).items():
                loader = build_eval_loader(_loader_config(data_cfg, lead), samples, self.options.batch_size,
                                           scale=q, crop=crop, rank=self.dist.rank,
                                           world_size=self.dist.world_size)
                seen = self._read(loader, out, group, q, methods)
                if shard is None:
                    shard = seen
                elif seen != shard:
                    raise RuntimeError(f"the pass at Q={q} saw a different set of images than the first pass")
        out.shard = shard or set()
        return out

    def _read(self, loader, out: Collected, group: _PreparedGroup, q: int, methods: list[str]) -> set[int]:
        """One read of the data at test scale ``q``, feeding ``methods``; the sample indices seen."""
        seen: set[int] = set()
        nets = len(group.models)
        desc = f"{'+'.join(methods)} Q={q}" + (f" ({nets} nets)" if nets > 1 else "")
        bar = progress_bar(loader, total=len(loader) if hasattr(loader, "__len__") else None, desc=desc,
                           unit="batch", leave=False, disable=not (self.options.progress and self.dist.is_main))
        t_read = time.perf_counter()
        for images, _labels, indices, bad_batch in bar:
            # A read shared by several methods charges its waiting time to them equally.
            wait = time.perf_counter() - t_read
            for method in methods:
                out.seconds[Pass(method, q)] += wait / len(methods)
            batch_ids = [int(i) for i in indices] + [int(i) for i, _ in bad_batch]
            if seen.intersection(batch_ids) or len(set(batch_ids)) != len(batch_ids):
                raise RuntimeError(f"the loader yielded an image twice in one pass (Q={q}); "
                                   "sharding must cover each image exactly once")
            seen.update(batch_ids)
            out.bad.update((int(i), str(path)) for i, path in bad_batch)
            if images.shape[0]:
                images, ids = self.runtime.prepare_input(images), [int(i) for i in indices]
                for method in methods:
                    self._run_method(method, images, ids, out, group, q)
            t_read = time.perf_counter()
        bar.close()
        return seen

    def _run_method(self, method: str, images: torch.Tensor, ids: list[int], out: Collected,
                    group: _PreparedGroup, q: int) -> None:
        t = time.perf_counter()
        group_sum = PosteriorAverage()
        for model, perm in group.models:
            p = protocols.posteriors(method, model, images, crop=group.crop_size, flip=self.options.flip,
                                     dense_average=self.options.dense_average, crop_batch=self.crop_batch,
                                     runtime=self.runtime)
            group_sum.add(p if perm is None else p[:, perm.to(p.device)])
        out.sums[(Pass(method, q), group.index)].put(ids, group_sum.total)
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize(self.runtime.device)  # so the time is the forward's, not the launch's
        out.seconds[Pass(method, q)] += time.perf_counter() - t


@dataclass
class SweepTotals:
    """What all ranks together saw: undecodable images and the time per pass."""

    bad_mask: torch.Tensor  # [N] bool
    bad: list[tuple[int, str]]  # (sample index, path), all ranks'
    seconds: dict[Pass, float]  # mean over ranks

    @property
    def n_bad(self) -> int:
        return int(self.bad_mask.sum().item())


def combine_shards(collected: Collected, n: int) -> SweepTotals:
    """Check that the ranks' shards cover each of the ``n`` images exactly once; gather the
    undecodable ones and the time per pass."""
    dist = current()
    coverage = torch.zeros(n, dtype=torch.float64)
    coverage[list(collected.shard)] = 1
    bad_mask = torch.zeros(n, dtype=torch.float64)
    bad_mask[list(collected.bad)] = 1
    passes = list(collected.seconds)
    timing = torch.tensor([collected.seconds[p] for p in passes], dtype=torch.float64)
    for t in (coverage, bad_mask, timing):
        all_reduce_sum(t)
    if not torch.all(coverage == 1):
        missing = (coverage == 0).nonzero().flatten()[:5].tolist()
        twice = (coverage > 1).nonzero().flatten()[:5].tolist()
        raise RuntimeError(f"evaluation did not cover every image exactly once: missing {missing}, "
                           f"on several ranks {twice} (of {n})")
    totals = SweepTotals(bad_mask=bad_mask.bool(), bad=sorted(collected.bad.items()),
                         seconds={p: timing[i].item() / dist.world_size for i, p in enumerate(passes)})
    n_bad = totals.n_bad
    if dist.world_size > 1 and n_bad:
        gathered: list = [None] * dist.world_size
        tdist.all_gather_object(gathered, totals.bad)
        totals.bad = sorted(x for part in gathered for x in part)
    if n_bad:
        log.warning("%d of %d images could not be decoded; they count as errors: %s", n_bad, n,
                    ", ".join(p for _, p in totals.bad[:5]) + (" ..." if n_bad > 5 else ""))
    return totals


# --- stage 2: fuse ---------------------------------------------------------------------------

def fuse_row(collected: Collected, spec: RowSpec, ids: list[int]) -> torch.Tensor:
    """Posteriors [len(ids), K] of a row: per image the mean over the row's passes and all nets.

    Every (pass, net) posterior weighs the same however the nets were grouped for reading:
    group sums carry their count, and the division happens once, at the end.
    """
    row = PosteriorAverage()
    for p in spec.passes:
        per_pass = PosteriorAverage()
        for g in range(len(collected.groups)):
            sums = collected.sums[(p, g)]
            per_pass.add(sums.get(ids), sums.count)
        row.merge(per_pass)
    return row.mean()


# --- stage 3: score --------------------------------------------------------------------------

def score_images(posterior: torch.Tensor | None, ids: list[int], labels: torch.Tensor, num_classes: int,
                 bad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top-5 classes [N, 5], their posteriors, top-1/top-5 hits [N, 2]) of all N images.

    Each rank fills in its own images (``ids``, rows of ``posterior``) and the sum over ranks
    completes the vectors; undecodable images get no classes (-1) and no hits.
    """
    n, topn = labels.shape[0], min(5, num_classes)
    top = torch.zeros(n, topn, dtype=torch.float64)
    prob = torch.zeros(n, topn, dtype=torch.float64)
    hits = torch.zeros(n, 2, dtype=torch.float64)
    if ids:
        pv, pi = posterior.topk(topn, dim=1)
        idx = torch.tensor(ids, dtype=torch.long)
        top[idx], prob[idx] = pi.double(), pv.double()
        hits[idx] = topk_hits(posterior, labels[idx], (1, 5)).double()
    for t in (top, prob, hits):
        all_reduce_sum(t)
    top[bad_mask] = -1
    return top.long(), prob.float(), hits.bool()


def table_row(spec: RowSpec, hits: torch.Tensor, totals: SweepTotals, options: EvalOptions,
              nets: list[EvalNet]) -> dict:
    n = hits.shape[0]
    c1, c5 = hits.sum(0).tolist()
    elapsed = sum(totals.seconds[p] for p in spec.passes)
    row = {
        "protocol": spec.protocol,
        "scales": list(spec.scales),
        "top1_error": 100.0 * (1 - c1 / n),
        "top5_error": 100.0 * (1 - c5 / n),
        "images": n,
        "images_per_s": n / elapsed if elapsed > 0 else float("nan"),
        "bad_images": totals.n_bad,
        "flip": options.flip,
        "nets": [net.source for net in nets],
    }
    if "dense" in protocols.methods_of(spec.protocol):
        row["dense_average"] = options.dense_average
    return row


# --- the sweep -------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_rows(nets, data_cfg, samples: Sequence, rows: Sequence[RowSpec], *,
                  classes: Sequence[str] | None = None, options: EvalOptions | None = None,
                  runtime: Runtime | None = None) -> EvalResult:
    """Evaluate one or several nets (fusion) on ``samples`` [(path, label)] for every row.

    ``classes``: the dataset's class ids, in label order; each net's outputs are mapped onto
    it by class id (nets without class ids must already share the dataset's order).
    ``runtime``: device, AMP and memory format, built once per process by the caller; by
    default from ``options.device`` and ``options.amp`` for this process's rank.
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

    passes = sorted({p for r in rows for p in r.passes}, key=lambda p: (p.scale, p.method))
    collected = PosteriorCollector(options, runtime).collect(nets, perms, data_cfg, samples, passes)
    totals = combine_shards(collected, len(samples))
    good = sorted(collected.shard - set(collected.bad))
    results = []
    for spec in rows:
        posterior = fuse_row(collected, spec, good) if good else None
        top, prob, hits = score_images(posterior, good, labels, num_classes, totals.bad_mask)
        results.append(RowResult(row=table_row(spec, hits, totals, options, nets), top5=top,
                                 top5_prob=prob, hits=hits, labels=labels))
    names = next((net.class_names for net in nets if net.class_names), {})
    return EvalResult(results=results, classes=reference, class_names=names, samples=samples,
                      bad=totals.bad)


def evaluate(models_or_checkpoints, data_cfg, samples: Sequence, *, protocol: str = "center",
             scales: Sequence[int] | str = "single", classes: Sequence[str] | None = None,
             options: EvalOptions | None = None, runtime: Runtime | None = None) -> dict:
    """One row of the paper's table: ``protocol`` at test scales ``scales``.

    ``models_or_checkpoints``: a VGG, a checkpoint path / run directory, an ``EvalNet``, or a
    list of these (fusion: posteriors averaged). ``scales``: a list of Q, or "single" /
    "multi" for the paper's sets from the first net's training scale S (``resolve_scales``).
    Returns a dict with ``protocol``, ``scales``, ``top1_error``, ``top5_error`` (percent),
    ``images``, ``images_per_s``, ``bad_images``.
    """
    nets = as_eval_nets(models_or_checkpoints, data_cfg)
    spec = RowSpec(protocol, tuple(resolve_scales(nets[0].data, scales)))
    return evaluate_rows(nets, data_cfg, samples, [spec], classes=classes, options=options,
                         runtime=runtime).rows[0]
