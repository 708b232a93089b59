"""Run evaluation protocols over a dataset: every (protocol, scale set) row in one sweep.

For each net (grouped by preprocessing) and each test scale Q the data is read once: the
centre-crop loader feeds ``center``; the whole-image loader feeds ``dense`` and ``multicrop``
together. Per-image posteriors are accumulated per (kind, Q) and summed over nets; a row's
posterior is then the mean over its scales (and, for dense+multicrop, over both kinds):
multi-scale averaging, the combination and fusion are all averages of softmax posteriors.

Distributed: every rank evaluates its shard; per-image results are summed into full-size
vectors with one all-reduce, so every rank ends with the same rows, and a per-image coverage
count proves each image was evaluated exactly once (an error otherwise). Undecodable images
are counted as errors at every k and reported by path.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from verydeep.evaluate import protocols
from verydeep.evaluate.checkpoints import EvalNet, as_eval_nets
from verydeep.evaluate.crops import GRID, crops_per_image
from verydeep.evaluate.fusion import class_permutation
from verydeep.topk import topk_hits
from verydeep.parallel.distributed import all_reduce_sum, current, resolve_device
from verydeep.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowSpec:
    """One line of the results table: a protocol at a set of test scales Q."""

    protocol: str
    scales: tuple[int, ...]

    def __post_init__(self) -> None:
        protocols.check_protocol(self.protocol)
        if not self.scales or any(int(q) < 1 for q in self.scales):
            raise ValueError(f"test scales must be positive integers, got {self.scales!r}")

    @property
    def passes(self) -> list[tuple[str, int]]:
        return [(kind, int(q)) for q in self.scales for kind in protocols.KINDS[self.protocol]]


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


def default_scales(data_cfg, multi_scale: bool) -> list[int]:
    """The paper's test scales from the training scale S (``data.scale_min/scale_max``).

    Fixed S: Q = S single-scale, {S-32, S, S+32} multi-scale. Jittered S in [Smin, Smax]:
    Q = (Smin+Smax)/2 single-scale, {Smin, (Smin+Smax)/2, Smax} multi-scale (384 and
    256, 384, 512 for the paper's [256, 512]).
    """
    lo, hi = int(data_cfg.scale_min), int(data_cfg.scale_max)
    if lo == hi:
        return [lo - 32, lo, lo + 32] if multi_scale else [lo]
    mid = (lo + hi) // 2
    return [lo, mid, hi] if multi_scale else [mid]


class _Store:
    """Per-image posterior sums for this rank's shard, keyed by sample index."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.row_of: dict[int, int] = {}
        self.data = torch.zeros(0, num_classes, dtype=torch.float32)

    def add(self, indices: torch.Tensor, probs: torch.Tensor) -> None:
        rows = []
        for i in indices.tolist():
            r = self.row_of.get(i)
            if r is None:
                r = self.row_of[i] = len(self.row_of)
            rows.append(r)
        if len(self.row_of) > self.data.shape[0]:
            grown = torch.zeros(max(len(self.row_of), 2 * self.data.shape[0]), self.num_classes)
            grown[: self.data.shape[0]] = self.data
            self.data = grown
        self.data.index_add_(0, torch.tensor(rows, dtype=torch.long), probs.float().cpu())

    def get(self, indices: list[int]) -> torch.Tensor:
        return self.data[torch.tensor([self.row_of[i] for i in indices], dtype=torch.long)]


def _loader_cfg(data_cfg, net: EvalNet):
    """The dataset's loader settings with the net's own preprocessing (normalisation, crop)."""
    if data_cfg is None:
        return net.data
    keep = {k: getattr(net.data, k) for k in net.preprocessing_keys if hasattr(data_cfg, k)}
    return dataclasses.replace(data_cfg, **keep)


@torch.no_grad()
def evaluate_rows(nets, data_cfg, samples: Sequence, rows: Sequence[RowSpec], *,
                  classes: Sequence[str] | None = None, flip: bool = True, batch_size: int = 32,
                  device: str | torch.device = "auto", dense_average: str = protocols.DENSE_AVERAGE,
                  crop_batch: int | None = None, progress: bool = True) -> EvalResult:
    """Evaluate one or several nets (fusion) on ``samples`` [(path, label)] for every row.

    ``classes``: the dataset's class ids, in label order; each net's outputs are mapped onto
    it by class id (nets without class ids must already share the dataset's order).
    ``batch_size``: images per loader batch; ``crop_batch``: crops per forward pass in
    multi-crop (default 4 x batch_size, at least one image's crops).
    """
    from verydeep.data import build_eval_loader

    nets = as_eval_nets(nets, data_cfg)
    rows = [r if isinstance(r, RowSpec) else RowSpec(r[0], tuple(r[1])) for r in rows]
    if not rows:
        raise ValueError("nothing to evaluate: no (protocol, scales) rows given")
    n = len(samples)
    if n == 0:
        raise ValueError("nothing to evaluate: the sample list is empty")
    dist = current()
    dev = torch.device(device) if isinstance(device, torch.device) else resolve_device(device, dist.local_rank)
    num_classes = {net.model.spec.num_classes for net in nets}
    if len(num_classes) != 1:
        raise ValueError(f"cannot fuse nets with different numbers of classes: {sorted(num_classes)}")
    (k,) = num_classes
    reference = list(classes) if classes is not None else nets[0].classes
    if reference is not None and len(reference) != k:
        raise ValueError(f"the data has {len(reference)} classes but the net predicts {k}")
    perms = [class_permutation(net.classes, reference, source=net.source) for net in nets]
    labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.long)
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must lie in [0, {k}), found {labels.min().item()}..{labels.max().item()}")

    passes = sorted({p for r in rows for p in r.passes}, key=lambda p: (p[1], p[0]))
    stores = {p: _Store(k) for p in passes}
    seconds = dict.fromkeys(passes, 0.0)
    bad: dict[int, str] = {}
    shard: set[int] | None = None
    per_image = crops_per_image(GRID, flip)
    crop_batch = crop_batch or max(per_image, 4 * batch_size)

    # Nets sharing preprocessing share one read of the data.
    groups: dict[tuple, list[int]] = {}
    for i, net in enumerate(nets):
        groups.setdefault(net.preprocessing_key(), []).append(i)
    for members in groups.values():
        cfg = _loader_cfg(data_cfg, nets[members[0]])
        crop_size = int(nets[members[0]].data.crop_size)
        models = []
        for i in members:
            m = nets[i].model.to(dev).eval()
            if dev.type == "cuda":
                m = m.to(memory_format=torch.channels_last)
            models.append(m)
        by_read: dict[tuple, list[str]] = {}
        for kind, q in passes:
            # The loader's own centre crop (as in training's validation) needs Q >= crop.
            crop = crop_size if kind == "center" and q >= crop_size else None
            by_read.setdefault((q, crop), []).append(kind)
        for (q, crop), kinds in by_read.items():
            loader = build_eval_loader(cfg, samples, batch_size, scale=q, crop=crop,
                                       rank=dist.rank, world_size=dist.world_size)
            seen: set[int] = set()
            desc = f"{'+'.join(kinds)} Q={q}" + (f" ({len(members)} nets)" if len(members) > 1 else "")
            total = len(loader) if hasattr(loader, "__len__") else None
            bar = progress_bar(loader, total=total, desc=desc, unit="batch", leave=False,
                               disable=not (progress and dist.is_main))
            t_read = time.perf_counter()
            for images, _labels, indices, bad_batch in bar:
                wait = time.perf_counter() - t_read
                for kind in kinds:
                    seconds[(kind, q)] += wait / len(kinds)
                batch_ids = [int(i) for i in indices] + [int(i) for i, _ in bad_batch]
                if seen.intersection(batch_ids) or len(set(batch_ids)) != len(batch_ids):
                    raise RuntimeError(f"the loader yielded an image twice in one pass (Q={q}); "
                                       "sharding must cover each image exactly once")
                seen.update(batch_ids)
                for i, path in bad_batch:
                    bad[int(i)] = str(path)
                if images.shape[0]:
                    images = images.to(dev, non_blocking=True)
                    indices = torch.as_tensor(indices, dtype=torch.long)
                    for kind in kinds:
                        t = time.perf_counter()
                        for m, j in zip(models, members):
                            p = protocols.posteriors(kind, m, images, crop=crop_size, flip=flip,
                                                     dense_average=dense_average, max_batch=crop_batch)
                            if perms[j] is not None:
                                p = p[:, perms[j].to(p.device)]
                            stores[(kind, q)].add(indices, p)
                        if dev.type == "cuda":
                            torch.cuda.synchronize(dev)
                        seconds[(kind, q)] += time.perf_counter() - t
                t_read = time.perf_counter()
            bar.close()
            if shard is None:
                shard = seen
            elif seen != shard:
                raise RuntimeError(f"the pass at Q={q} saw a different set of images than the first pass")

    shard = shard or set()
    coverage = torch.zeros(n, dtype=torch.float64)
    coverage[list(shard)] = 1
    bad_mask = torch.zeros(n, dtype=torch.float64)
    bad_mask[list(bad)] = 1
    timing = torch.tensor([seconds[p] for p in passes], dtype=torch.float64)
    for t in (coverage, bad_mask, timing):
        all_reduce_sum(t)
    if not torch.all(coverage == 1):
        missing = (coverage == 0).nonzero().flatten()[:5].tolist()
        twice = (coverage > 1).nonzero().flatten()[:5].tolist()
        raise RuntimeError(f"evaluation did not cover every image exactly once: missing {missing}, "
                           f"on several ranks {twice} (of {n})")
    seconds = {p: timing[i].item() / dist.world_size for i, p in enumerate(passes)}
    n_bad = int(bad_mask.sum().item())
    bad_list = sorted(bad.items())
    if dist.world_size > 1 and n_bad:
        import torch.distributed as tdist

        gathered: list = [None] * dist.world_size
        tdist.all_gather_object(gathered, bad_list)
        bad_list = sorted(x for part in gathered for x in part)
    if n_bad:
        log.warning("%d of %d images could not be decoded; they count as errors: %s", n_bad, n,
                    ", ".join(p for _, p in bad_list[:5]) + (" ..." if n_bad > 5 else ""))

    good = sorted(shard - set(bad))
    topn = min(5, k)
    results = []
    for spec in rows:
        top = torch.zeros(n, topn, dtype=torch.float64)
        prob = torch.zeros(n, topn, dtype=torch.float64)
        hits = torch.zeros(n, 2, dtype=torch.float64)
        if good:
            post = sum(stores[p].get(good) for p in spec.passes) / (len(spec.passes) * len(nets))
            pv, pi = post.topk(topn, dim=1)
            idx = torch.tensor(good, dtype=torch.long)
            top[idx], prob[idx] = pi.double(), pv.double()
            hits[idx] = topk_hits(post, labels[idx], (1, 5)).double()
        for t in (top, prob, hits):
            all_reduce_sum(t)
        top[bad_mask.bool()] = -1
        elapsed = sum(seconds[p] for p in spec.passes)
        c1, c5 = hits.sum(0).tolist()
        row = {
            "protocol": spec.protocol,
            "scales": list(spec.scales),
            "top1_error": 100.0 * (1 - c1 / n),
            "top5_error": 100.0 * (1 - c5 / n),
            "images": n,
            "images_per_s": n / elapsed if elapsed > 0 else float("nan"),
            "bad_images": n_bad,
            "flip": flip,
            "nets": [net.source for net in nets],
        }
        if spec.protocol in ("dense", "dense+multicrop"):
            row["dense_average"] = dense_average
        results.append(RowResult(row=row, top5=top.long(), top5_prob=prob.float(),
                                 hits=hits.bool(), labels=labels))
    names = next((net.class_names for net in nets if net.class_names), {})
    return EvalResult(results=results, classes=reference, class_names=names, samples=samples,
                      bad=bad_list)


def evaluate(models_or_checkpoints, data_cfg, samples: Sequence, *, protocol: str = "center",
             scales: Sequence[int] | str | None = None, flip: bool = True, batch_size: int = 32,
             device: str | torch.device = "auto", classes: Sequence[str] | None = None,
             dense_average: str = protocols.DENSE_AVERAGE, progress: bool = True) -> dict:
    """One row of the paper's table: ``protocol`` at test scales ``scales``.

    ``models_or_checkpoints``: a VGG, a checkpoint path / run directory, an ``EvalNet``, or a
    list of these (fusion: posteriors averaged). ``scales``: a list of Q, or "single" /
    "multi" (default "single") for the defaults derived from the recipe's S
    (``default_scales``). Returns a dict with ``protocol``, ``scales``, ``top1_error``,
    ``top5_error`` (percent), ``images``, ``images_per_s``, ``bad_images``.
    """
    nets = as_eval_nets(models_or_checkpoints, data_cfg)
    if scales is None or isinstance(scales, str):
        which = scales or "single"
        if which not in ("single", "multi"):
            raise ValueError(f"scales must be a list of Q, 'single' or 'multi', got {scales!r}")
        scales = default_scales(nets[0].data, which == "multi")
    result = evaluate_rows(nets, data_cfg, samples, [RowSpec(protocol, tuple(int(q) for q in scales))],
                           classes=classes, flip=flip, batch_size=batch_size, device=device,
                           dense_average=dense_average, progress=progress)
    return result.rows[0]
