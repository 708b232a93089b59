"""``verydeep data ...``: info, check, stats, prepare, demo. Thin: the work is in verydeep.data."""

from __future__ import annotations

import argparse

from verydeep.cli.vocabulary import add_data, add_json, add_out, add_workers, dataset_folder, emit_json
from verydeep.data.demo_classes import CLASS_SETS
from verydeep.errors import UsageError


def _dataset(p: argparse.ArgumentParser, help: str) -> None:
    add_data(p, help=help)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect, check, prepare datasets; generate the demo data")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    q = dsub.add_parser("info", help="find the splits of a dataset: layout, counts, classes")
    _dataset(q, "folder with train/ and val/ (ImageNet or any folder of classes)")
    q.add_argument("--val-labels", help="ground truth of a flat val/ (LOC_val_solution.csv or devkit txt)")
    q.add_argument("--val-synsets", help="devkit ILSVRC id -> wnid mapping")
    q.add_argument("--index-cache", help="folder of the cached file index")
    q.set_defaults(func=run_info)

    q = dsub.add_parser("check", help="decode every image; list unreadable, truncated and non-image files")
    _dataset(q, "dataset root (train/, val/) or any folder of images")
    add_workers(q, default=2, what="decoding")
    q.add_argument("--index-cache", help="folder of the cached file index")
    q.set_defaults(func=run_check)

    q = dsub.add_parser("stats", help="mean RGB and colour PCA of a sample of training images (JSON)")
    _dataset(q, "dataset root (uses train/) or a folder of class folders")
    q.add_argument("--images", type=int, default=10000, help="images to sample")
    q.add_argument("--short-side", type=int, default=64, help="shorter side images are reduced to first")
    q.add_argument("--seed", type=int, default=0)
    add_workers(q, default=2, what="decoding")
    add_json(q, "the statistics (default: data_stats.json; then --set data.stats_file=PATH)")
    q.set_defaults(func=run_stats)

    q = dsub.add_parser("prepare", help="resized copy of a dataset (shorter side capped), same layout")
    add_data(q, help="the dataset to copy")
    add_out(q, "the resized copy, in the same layout")
    q.add_argument("--max-short-side", type=int, default=512)
    q.add_argument("--quality", type=int, default=90, help="JPEG quality of resized images")
    add_workers(q, default=2, what="decoding")
    q.set_defaults(func=run_prepare)

    q = dsub.add_parser("demo", help="generate the embedded demo dataset (ImageNet layout)")
    add_out(q, "the demo dataset", default_text="data/demo")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--train-per-class", type=int, default=240)
    q.add_argument("--val-per-class", type=int, default=60)
    q.add_argument("--classes", choices=tuple(CLASS_SETS), default="shapes",
                   help="the class set: shapes (default) or alt, ten other shapes (a second data set of the same kind)")
    q.set_defaults(func=run_demo)


def run_info(args) -> int:
    from verydeep.data import DataConfig, discover

    splits = discover(DataConfig(root=dataset_folder(args), val_labels=args.val_labels, val_synsets=args.val_synsets,
                                 index_cache=args.index_cache))
    print(f"classes: {len(splits.classes)} ({len(splits.class_names)} with names)")
    print(f"train:   {len(splits.train)} images in {splits.train_dir}")
    print(f"val:     {len(splits.val)} images in {splits.val_dir}, layout {splits.val_layout}"
          + (f" ({splits.val_labels})" if splits.val_labels else ""))
    if splits.train:
        counts = [0] * len(splits.classes)
        for _, label in splits.train:
            counts[label] += 1
        print(f"train images per class: min {min(counts)}, max {max(counts)}")
    for wnid in splits.classes[:5]:
        print(f"  {splits.classes.index(wnid):>4}  {wnid}  {splits.class_names.get(wnid, '')}")
    if len(splits.classes) > 5:
        print(f"  ... {len(splits.classes) - 5} more")
    return 0


def run_check(args) -> int:
    from verydeep.data.check import check_path

    result = check_path(dataset_folder(args), workers=args.workers, index_cache=args.index_cache)
    if result["summary"]:
        print(result["summary"])
    for path, reason in result["bad"]:
        print(f"BAD {path}: {reason}")
    print(f"{result['images']} files checked, {len(result['bad'])} unreadable")
    return 1 if result["bad"] else 0


def run_stats(args) -> int:
    from pathlib import Path

    from verydeep.data import DataConfig, discover

    root = Path(dataset_folder(args))
    cfg = DataConfig(root=str(root)) if (root / "train").is_dir() else DataConfig(train_dir=str(root))
    splits = discover(cfg)  # before numpy and torch load: a wrong folder is answered at once

    from verydeep.data.stats import compute_stats, write_stats

    stats = compute_stats([p for p, _ in splits.train], num_images=args.images, seed=args.seed,
                          short_side=args.short_side, workers=args.workers)
    dest = args.json or "data_stats.json"
    if dest == "-":
        emit_json(stats, "-")
        return 0
    write_stats(stats, dest)
    fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"  # noqa: E731
    print(f"{stats['images']} images, {stats['pixels']} pixels ({stats['unreadable']} unreadable)")
    print(f"mean {fmt(stats['mean'])}  std {fmt(stats['std'])}  PCA eigenvalues {fmt(stats['pca_eigval'])}")
    print(f"written to {dest}; use it with --set data.stats_file={dest}")
    return 0


def run_prepare(args) -> int:
    from pathlib import Path

    from verydeep.data.errors import DataError

    src, dst = args.data, args.out
    if not src or not dst:
        raise UsageError("data prepare needs --data SRC and --out DST")
    if not Path(src).is_dir():  # before torch loads: answered at once
        raise DataError(f"{src} is not a folder")

    from verydeep.data.prepare import prepare_dataset

    r = prepare_dataset(src, dst, max_short_side=args.max_short_side, quality=args.quality,
                        workers=args.workers)
    print(f"{r['files']} files: {r['resized']} resized, {r['copied']} copied, {r['skipped']} already done, "
          f"{r['bad']} unreadable (copied unchanged) -> {r['dst']}")
    for path in r["bad_files"][:20]:
        print(f"BAD {path}")
    return 0


def run_demo(args) -> int:
    from verydeep.data import make_demo_dataset

    r = make_demo_dataset(args.out or "data/demo", seed=args.seed, train_per_class=args.train_per_class,
                          val_per_class=args.val_per_class, classes=args.classes)
    print(f"demo dataset in {r['root']}: {r['classes']} classes, {r['train']} train, {r['val']} val images")
    return 0
