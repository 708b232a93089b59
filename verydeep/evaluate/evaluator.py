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
from collections.abc import Callable, Sequence
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
from verydeep.evaluate.scales import check_scales, net_scale_sets
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

    def passes_of(self, net: int) -> list[Pass]:
        return [Pass(method, int(q)) for q in self.scales_of(net) for method in protocols.methods_of(self.protocol)]

    @property
    def passes(self) -> list[Pass]:
        """Every pass of the row, over all nets."""
        return [Pass(method, int(q)) for q in self.scales for method in protocols.methods_of(self.protocol)]

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

class SumKey(NamedTuple):
    """One running sum of per-image posteriors: a pass, a preprocessing group, and the group's
    nets summed (those a row runs at this pass; usually the whole group)."""

    pass_: Pass
    group: int
    nets: tuple[int, ...]


def group_by_preprocessing(nets: list[EvalNet]) -> list[list[int]]:
    """Indices of nets that see identical inputs, so that they share every read of the data."""
    groups: dict[str, list[int]] = {}
    for i, net in enumerate(nets):
        groups.setdefault(net.preprocessing_key(), []).append(i)
    return list(groups.values())


def row_terms(spec: RowSpec, groups: list[list[int]]) -> dict[int, list[SumKey]]:
    """The sums a row averages, keyed by how many passes each of their nets has in the row
    (nets with per-net test scales may have different numbers; see :func:`fuse_row`)."""
    terms: dict[int, list[SumKey]] = {}
    for p in spec.passes:
        for g, members in enumerate(groups):
            by_count: dict[int, list[int]] = {}
            for i in members:
                own = spec.passes_of(i)
                if p in own:
                    by_count.setdefault(len(own), []).append(i)
            for count, nets in by_count.items():
                terms.setdefault(count, []).append(SumKey(p, g, tuple(nets)))
    return terms


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
    sums: dict[SumKey, ShardPosteriors]  # summed over the key's nets
    seconds: dict[Pass, float]  # data reading and forward time per pass, in sweep order
    shard: set[int] = field(default_factory=set)  # sample indices this rank read
    bad: dict[int, str] = field(default_factory=dict)  # undecodable: sample index -> path
    done: set[SumKey] = field(default_factory=set)  # sums whose every read has finished


@dataclass
class _PreparedGroup:
    index: int
    models: dict[int, tuple[nn.Module, torch.Tensor | None]]  # net index -> (prepared model, class permutation)
    crop_size: int
    sums: dict[Pass, list[SumKey]]  # what each pass of this group feeds


class PosteriorCollector:
    """Stage 1: run every pass with the nets that need it over this rank's shard of the samples."""

    def __init__(self, options: EvalOptions, runtime: Runtime) -> None:
        self.options, self.runtime, self.dist = options, runtime, current()
        self.crop_batch = options.crop_batch or max(crops_per_image(GRID, options.flip), 4 * options.batch_size)

    def collect(self, nets: list[EvalNet], perms: list[torch.Tensor | None], data_cfg,
                samples: Sequence, rows: Sequence[RowSpec],
                after_read: Callable[[Collected], None] | None = None) -> Collected:
        """Every read the rows need; ``after_read(collected)`` after each one (the same reads,
        in the same order, on every rank: it may run collectives)."""
        groups = group_by_preprocessing(nets)
        keys = list(dict.fromkeys(k for spec in rows for terms in row_terms(spec, groups).values() for k in terms))
        passes = sorted({k.pass_ for k in keys}, key=lambda p: (p.scale, p.method))
        out = Collected(groups=groups, seconds=dict.fromkeys(passes, 0.0),
                        sums={k: ShardPosteriors(len(k.nets)) for k in keys})
        shard: set[int] | None = None
        for g, members in enumerate(groups):
            feeds: dict[Pass, list[SumKey]] = {}
            for k in keys:
                if k.group == g:
                    feeds.setdefault(k.pass_, []).append(k)
            used = sorted({i for ks in feeds.values() for k in ks for i in k.nets})
            group = _PreparedGroup(g, {i: (self.runtime.prepare_model(nets[i].model).eval(), perms[i]) for i in used},
                                   int(nets[members[0]].data.crop_size), feeds)
            for (q, crop), methods in plan_reads(sorted(feeds, key=lambda p: (p.scale, p.method)),
                                                 group.crop_size).items():
                loader = build_eval_loader(_loader_config(data_cfg, nets[members[0]]), samples,
                                           self.options.batch_size, scale=q, crop=crop, rank=self.dist.rank,
                                           world_size=self.dist.world_size)
                seen = self._read(loader, out, group, q, methods)
                if shard is None:
                    shard = seen
                elif seen != shard:
                    raise RuntimeError(f"the pass at Q={q} saw a different set of images than the first pass")
                out.shard = shard
                out.done.update(k for method in methods for k in feeds[Pass(method, q)])
                if after_read is not None:
                    after_read(out)
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
                    self._run_method(Pass(method, q), images, ids, out, group)
            t_read = time.perf_counter()
        bar.close()
        return seen

    def _run_method(self, p: Pass, images: torch.Tensor, ids: list[int], out: Collected,
                    group: _PreparedGroup) -> None:
        t = time.perf_counter()
        keys = group.sums[p]
        posteriors = {}  # each net runs once per batch, however many sums it feeds
        for i in sorted({i for k in keys for i in k.nets}):
            model, perm = group.models[i]
            post = protocols.posteriors(p.method, model, images, crop=group.crop_size, flip=self.options.flip,
                                        dense_average=self.options.dense_average, crop_batch=self.crop_batch,
                                        runtime=self.runtime, dense_pooling=self.options.dense_pooling)
            posteriors[i] = post if perm is None else post[:, perm.to(post.device)]
        for k in keys:
            key_sum = PosteriorAverage()
            for i in k.nets:
                key_sum.add(posteriors[i])
            out.sums[k].put(ids, key_sum.total)
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize(self.runtime.device)  # so the time is the forward's, not the launch's
        out.seconds[p] += time.perf_counter() - t


@dataclass
class SweepTotals:
    """What all ranks together saw: undecodable images and the time per pass."""

    bad_mask: torch.Tensor  # [N] bool
    bad: list[tuple[int, str]]  # (sample index, path), all ranks'
    seconds: dict[Pass, float]  # mean over ranks

    @property
    def n_bad(self) -> int:
        return int(self.bad_mask.sum().item())


def combine_shards(collected: Collected, n: int, *, warn: bool = True) -> SweepTotals:
    """Check that the ranks' shards cover each of the ``n`` images exactly once; gather the
    undecodable ones and the time per pass (``warn``: log the undecodable ones)."""
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
    if n_bad and warn:
        log.warning("%d of %d images could not be decoded; they count as errors: %s", n_bad, n,
                    ", ".join(p for _, p in totals.bad[:5]) + (" ..." if n_bad > 5 else ""))
    return totals


# --- stage 2: fuse ---------------------------------------------------------------------------

def fuse_row(collected: Collected, spec: RowSpec, ids: list[int]) -> torch.Tensor:
    """Posteriors [len(ids), K] of a row: per image the mean over nets of each net's mean over
    its passes (every (pass, net) posterior weighs the same when all nets have as many passes,
    however they were grouped for reading: sums carry their count, divided once at the end).
    """
    by_count = {}
    for count, keys in row_terms(spec, collected.groups).items():
        average = PosteriorAverage()
        for k in keys:
            sums = collected.sums[k]
            average.add(sums.get(ids), sums.count)
        by_count[count] = average
    if len(by_count) == 1:
        return next(iter(by_count.values())).mean()
    # Nets with different numbers of passes: each net's own mean first, then the nets' mean.
    fused = PosteriorAverage()
    for count, average in by_count.items():
        nets = average.count // count
        fused.add(average.mean() * nets, nets)
    return fused.mean()


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


def gather_posteriors(posterior: torch.Tensor | None, ids: list[int], n: int, num_classes: int) -> torch.Tensor:
    """The posteriors [N, K] of all N images on every rank (zeros for undecodable ones)."""
    full = torch.zeros(n, num_classes, dtype=torch.float32)
    if ids:
        full[torch.tensor(ids, dtype=torch.long)] = posterior.float().cpu()
    return all_reduce_sum(full)


def table_row(spec: RowSpec, hits: torch.Tensor, totals: SweepTotals, options: EvalOptions,
              nets: list[EvalNet]) -> dict:
    n = hits.shape[0]
    c1, c5 = hits.sum(0).tolist()
    elapsed = sum(totals.seconds[p] for p in spec.passes)
    row = {
        "protocol": spec.protocol,
        "scales": list(spec.scales),
        **({"net_scales": [list(q) for q in spec.net_scales]} if spec.net_scales else {}),
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
                  runtime: Runtime | None = None, keep_posteriors: bool = False,
                  on_row: Callable[[int, RowResult], None] | None = None) -> EvalResult:
    """Evaluate one or several nets (fusion) on ``samples`` [(path, label)] for every row.

    ``classes``: the dataset's class ids, in label order; each net's outputs are mapped onto
    it by class id (nets without class ids must already share the dataset's order).
    ``runtime``: device, AMP and memory format, built once per process by the caller; by
    default from ``options.device`` and ``options.amp`` for this process's rank.
    ``keep_posteriors``: each row's full [N, K] posteriors in ``RowResult.posteriors`` (on
    every rank), e.g. to save them (``verydeep.evaluate.posteriors_file``).
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

    groups = group_by_preprocessing(nets)
    needs = [{k for terms in row_terms(spec, groups).values() for k in terms} for spec in rows]
    scored: dict[int, RowResult] = {}

    def score_ready(collected: Collected, totals: SweepTotals | None = None) -> None:
        """Stages 2 and 3 for the rows whose sums are complete (collective: every rank calls it)."""
        ready = [i for i, need in enumerate(needs) if i not in scored and need <= collected.done]
        if not ready:
            return
        totals = totals or combine_shards(collected, len(samples), warn=False)
        good = sorted(collected.shard - set(collected.bad))
        for i in ready:
            posterior = fuse_row(collected, rows[i], good) if good else None
            top, prob, hits = score_images(posterior, good, labels, num_classes, totals.bad_mask)
            kept = gather_posteriors(posterior, good, len(samples), num_classes) if keep_posteriors else None
            scored[i] = RowResult(row=table_row(rows[i], hits, totals, options, nets), top5=top,
                                  top5_prob=prob, hits=hits, labels=labels, posteriors=kept)
            if on_row is not None:
                on_row(i, scored[i])

    collected = PosteriorCollector(options, runtime).collect(nets, perms, data_cfg, samples, rows,
                                                             after_read=score_ready if on_row else None)
    totals = combine_shards(collected, len(samples))
    score_ready(collected, totals)
    results = [scored[i] for i in range(len(rows))]
    names = next((net.class_names for net in nets if net.class_names), {})
    return EvalResult(results=results, classes=reference, class_names=names, samples=samples,
                      bad=totals.bad)


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
