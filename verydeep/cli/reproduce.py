"""``verydeep reproduce``: the paper's chain of nets, the evaluations of Tables 3-6 and a report
with our numbers next to the paper's (``verydeep.reproduce``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from verydeep.cli.vocabulary import add_amp, add_data, add_device, add_devices, add_out, positive_float
from verydeep.models.config import DENSE_POOLING


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="train the paper's chain of nets, evaluate Tables 3-6, write the report")
    add_data(p, required=True, help="dataset folder (ImageNet's layouts; for --profile mini, made with the demo "
                                    "generator when it holds no dataset)")
    add_out(p, "the runs (one per recipe), their evaluations and report.md/json/png (re-run the same command to "
               "skip finished runs and resume an interrupted one)", required=True)
    p.add_argument("--profile", choices=("imagenet", "mini"), default="imagenet",
                   help="imagenet: the paper's recipes as they are; mini: the same chain narrowed and shrunk for "
                        "a 2-core CPU, every departure named in the report (default: %(default)s)")
    p.add_argument("--tables", default="3,4,5,6", metavar="3,4,5,6",
                   help="the tables to reproduce; only the runs they need are trained (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (runs, order, which exist) and, with a measured throughput, GPU-hours")
    p.add_argument("--images-per-s", type=positive_float, metavar="N",
                   help="dry run: measured training images/s of VGG16 (D) at 224 on one device")
    p.add_argument("--bench", metavar="FILE",
                   help="dry run: the throughput from `verydeep bench train --preset paper --json FILE`")
    add_devices(p, what="dry run: devices to train on (default: the GPUs torch sees, at least 1)")
    add_device(p, key="evaluation")
    add_amp(p, key="precision of training and evaluation (none: fp32 with TF32 off, the paper's arithmetic, the "
            "exact run; a finished run keeps the precision it was trained in)")
    p.add_argument("--dense-pooling", choices=DENSE_POOLING, default=None,
                   help="dense evaluation's max-pool rounding: floor (PyTorch) or ceil (Caffe, the paper's tool) "
                        "(default: the profile's: imagenet ceil, mini floor)")
    p.set_defaults(func=run_reproduce)


def run_reproduce(args: argparse.Namespace) -> int:
    from verydeep.reproduce.profiles import get_profile
    from verydeep.reproduce.reproduction import (
        Request,
        describe_plan,
        parse_tables,
        reproduce,
    )

    req = Request(profile=get_profile(args.profile), data=Path(args.data), out=Path(args.out),
                  tables=parse_tables(args.tables), device=args.device, amp=args.amp,
                  dense_pooling=args.dense_pooling,
                  command=" ".join(["verydeep", *map(shlex.quote, sys.argv[1:])]))
    if req.out.exists() and not req.out.is_dir():  # the dry run writes nothing, but plans into --out
        from verydeep.errors import OutputError

        raise OutputError(20, f"--out {req.out}: a file stands where the runs' folder should be")
    if args.dry_run:
        print(describe_plan(req, _throughput(args), _devices(args)))
        return 0
    for path in reproduce(req):
        print(f"wrote {path}")
    return 0


def _throughput(args: argparse.Namespace):
    from verydeep.reproduce.estimate import Throughput, throughput_from_bench

    if args.bench:
        return throughput_from_bench(args.bench)
    if args.images_per_s:
        return Throughput(images_per_s=args.images_per_s, source="--images-per-s")
    return None


def _devices(args: argparse.Namespace) -> int:
    if args.devices:
        return args.devices
    import torch

    return max(1, torch.cuda.device_count())
