"""Stage 1 of an evaluation: every (net, method, Q)'s posteriors of this rank's images, stored.

Nets with the same preprocessing form a group that shares every read of the data: per group
and test scale Q the data is read once; the centre-crop read feeds ``center``, the whole-image
read feeds ``dense`` and ``multicrop`` together. Each net's posteriors of each batch, mapped
onto the reference class order, go to its entry of the ``PosteriorStore`` (rows: sample
indices). Reads go by group, then by ascending Q, in the same order on every rank.

Distributed: every rank reads its shard. ``check_coverage`` proves with a per-image count
(all-reduced) that each image was read exactly once (an error otherwise) and gathers the
undecodable images and the time per pass; ``gather_to_main`` copies every rank's rows into
the main rank's store, a chunk of images at a time, when the store is to be kept.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as tdist

from verydeep.data import build_eval_loader
from verydeep.evaluate import protocols
from verydeep.evaluate.checkpoints import EvalNet
from verydeep.evaluate.crops import GRID, crops_per_image
from verydeep.evaluate.options import EvalOptions
from verydeep.evaluate.posterior_store import Entry, PosteriorStore
from verydeep.parallel.distributed import all_reduce_sum, current
from verydeep.progress import progress_items
from verydeep.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class Collection:
    """This rank's share of stage 1, as it stands after each read."""

    seconds: dict[tuple[str, int], float]  # (method, Q) -> reading and forward time, in read order
    shard: set[int] = field(default_factory=set)  # sample indices this rank read
    bad: dict[int, str] = field(default_factory=dict)  # undecodable: sample index -> path
    done: set[Entry] = field(default_factory=set)  # entries whose read has finished


def group_by_preprocessing(nets: list[EvalNet]) -> list[list[int]]:
    """Indices of nets that see identical inputs, so that they share every read of the data."""
    groups: dict[str, list[int]] = {}
    for i, net in enumerate(nets):
        groups.setdefault(net.preprocessing_key(), []).append(i)
    return list(groups.values())


def loader_config(data_cfg, net: EvalNet):
    """The dataset's loader settings with the net's own preprocessing (normalization, crop)."""
    if data_cfg is None:
        return net.data
    keep = {k: getattr(net.data, k) for k in net.preprocessing_keys if hasattr(data_cfg, k)}
    return dataclasses.replace(data_cfg, **keep)


def collect(nets: list[EvalNet], perms: list[torch.Tensor | None], data_cfg, samples: Sequence,
            entries: Sequence[Entry], store: PosteriorStore, options: EvalOptions, runtime: Runtime,
            after_read: Callable[[Collection], None] | None = None) -> Collection:
    """Read the data once per (group, Q, loader crop) and store every entry; ``after_read`` after
    each read (the same reads in the same order on every rank: it may run collectives)."""
    dist = current()
    crop_batch = options.crop_batch or max(crops_per_image(GRID, options.flip), 4 * options.batch_size)
    out = Collection(seconds={(e.method, e.scale): 0.0 for e in sorted(entries, key=lambda e: (e.scale, e.method))})
    for entry in entries:
        store.add(entry)
    for members in group_by_preprocessing(nets):
        wanted = [e for e in entries if e.net in members]
        models = {i: runtime.prepare_model(nets[i].model).eval() for i in sorted({e.net for e in wanted})}
        crop_size = int(nets[members[0]].data.crop_size)
        reads: dict[tuple[int, int | None], list[Entry]] = {}
        for e in sorted(wanted, key=lambda e: (e.scale, e.method, e.net)):
            reads.setdefault((e.scale, protocols.input_crop(e.method, e.scale, crop_size)), []).append(e)
        for (q, crop), feeds in reads.items():
            loader = build_eval_loader(loader_config(data_cfg, nets[members[0]]), samples, options.batch_size,
                                       scale=q, crop=crop, rank=dist.rank, world_size=dist.world_size)
            # progress in images of this rank's shard (every world_size-th sample), not batches of crops
            bar = progress_items(loader, total=len(range(dist.rank, len(samples), dist.world_size)),
                                 count=lambda batch: len(batch[2]) + len(batch[3]),
                                 desc=f"{'+'.join(dict.fromkeys(e.method for e in feeds))} Q={q}"
                                      + (f" ({len(models)} nets)" if len(models) > 1 else ""),
                                 leave=False, disable=not (options.progress and dist.is_main))
            seen = set()
            t_read = time.perf_counter()
            for images, _labels, indices, bad_batch in bar:
                ids = [int(i) for i in indices]
                batch = ids + [int(i) for i, _ in bad_batch]
                if seen.intersection(batch) or len(set(batch)) != len(batch):
                    raise RuntimeError(f"the loader yielded an image twice in one pass (Q={q}); "
                                       "sharding must cover each image exactly once")
                seen.update(batch)
                out.bad.update((int(i), str(path)) for i, path in bad_batch)
                methods = list(dict.fromkeys(e.method for e in feeds))
                for method in methods:  # a read shared by several methods charges its wait to them equally
                    out.seconds[(method, q)] += (time.perf_counter() - t_read) / len(methods)
                if ids:
                    images = runtime.prepare_input(images)
                    for method in methods:
                        t = time.perf_counter()
                        for e in (e for e in feeds if e.method == method):
                            post = protocols.posteriors(method, models[e.net], images, crop=crop_size,
                                                        flip=options.flip, dense_average=options.dense_average,
                                                        crop_batch=crop_batch, runtime=runtime,
                                                        dense_pooling=options.dense_pooling)
                            perm = perms[e.net]
                            store.write(e.name, ids, post if perm is None else post[:, perm.to(post.device)])
                        out.seconds[(method, q)] += time.perf_counter() - t  # the copy to the host waits for the device
                t_read = time.perf_counter()
            bar.close()
            if out.done and seen != out.shard:
                raise RuntimeError(f"the pass at Q={q} saw a different set of images than the first pass")
            out.shard = seen
            out.done.update(feeds)
            if after_read is not None:
                after_read(out)
    return out


def check_coverage(collection: Collection, n: int, *, warn: bool = True
                   ) -> tuple[torch.Tensor, list[tuple[int, str]], dict[tuple[str, int], float]]:
    """Check that the ranks' shards cover each of the ``n`` images exactly once; (undecodable
    mask [N], every rank's undecodable (index, path), time per (method, Q) averaged over ranks)."""
    dist = current()
    coverage = torch.zeros(n, dtype=torch.float64)
    coverage[list(collection.shard)] = 1
    bad_mask = torch.zeros(n, dtype=torch.float64)
    bad_mask[list(collection.bad)] = 1
    passes = list(collection.seconds)
    timing = torch.tensor([collection.seconds[p] for p in passes], dtype=torch.float64)
    for t in (coverage, bad_mask, timing):
        all_reduce_sum(t)
    if not torch.all(coverage == 1):
        missing = (coverage == 0).nonzero().flatten()[:5].tolist()
        twice = (coverage > 1).nonzero().flatten()[:5].tolist()
        raise RuntimeError(f"evaluation did not cover every image exactly once: missing {missing}, "
                           f"on several ranks {twice} (of {n})")
    bad = sorted(collection.bad.items())
    n_bad = int(bad_mask.sum().item())
    if dist.world_size > 1 and n_bad:
        gathered: list = [None] * dist.world_size
        tdist.all_gather_object(gathered, bad)
        bad = sorted(x for part in gathered for x in part)
    if n_bad and warn:
        log.warning("%d of %d images could not be decoded; they count as errors: %s", n_bad, n,
                    ", ".join(p for _, p in bad[:5]) + (" ..." if n_bad > 5 else ""))
    return bad_mask.bool(), bad, {p: timing[i].item() / dist.world_size for i, p in enumerate(passes)}


def gather_to_main(store: PosteriorStore, names: Sequence[str], chunk: int) -> None:
    """Every rank's rows of each entry into the main rank's store, ``chunk`` images at a time
    (a rank's unread rows are zeros, so the sum over ranks is each image's own posteriors)."""
    dist = current()
    if dist.world_size == 1:
        return
    for name in names:
        for start in range(0, store.images, chunk):
            rows = np.arange(start, min(start + chunk, store.images))
            part = all_reduce_sum(store.read(name, rows))
            if dist.is_main:
                store.write(name, rows, part)
