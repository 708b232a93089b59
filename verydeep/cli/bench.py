"""``verydeep bench``: training, end-to-end, evaluation and data-pipeline throughput, ours vs reference.

Small defaults (a narrow VGG16 on small images) so each finishes quickly on a CPU;
``--preset paper`` is VGG16 at 224 with batch 256, the setting of ``bench/gpu.sh``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from verydeep.cli.vocabulary import (add_amp, add_batch_size, add_crop_size, add_data, add_device, add_devices,
                                     add_json, add_model, add_workers, emit_json)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=("small", "paper"), default="small",
                   help="small: narrow net, small images (CPU check); paper: VGG16 at 224, batch 256")
    add_device(p, default=None, default_text="auto (cuda with --preset paper)")
    p.add_argument("--steps", type=int, help="timed steps per window")
    p.add_argument("--warmup", type=int, help="untimed steps before timing")
    p.add_argument("--repeats", type=int, help="timed windows; the figure is their median")
    p.add_argument("--min-seconds", type=float,
                   help="each timed window lasts at least this long (paper preset: 5; small preset: 0)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0: torch's default). One thread keeps CPU timings steady "
                        "when other processes share the cores")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul-peak measurement")
    add_json(p)
    p.add_argument("--markdown", metavar="PATH", help="also write the table as markdown")


def _model_args(p: argparse.ArgumentParser) -> None:
    add_model(p, help="registry name (vgg11, vgg13, vgg16, vgg19; default vgg16)")
    p.add_argument("--width", type=float, help="channel width multiplier (small preset: 1/16)")
    add_batch_size(p, what="images per step (one process)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure training / evaluation / data throughput against the reference")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH")

    t = bsub.add_parser("train", help="training step on synthetic tensors: ours vs torchvision + a plain loop")
    _common(t)
    _model_args(t)
    add_crop_size(t, what="the net's input side (synthetic images of that size)")
    add_amp(t, default=None, default_text="the preset's")
    t.add_argument("--accum", type=int, help="micro-batches per step")
    t.add_argument("--variants", help="comma-separated: reference, reference+timm, ours, ours+OPTION[+OPTION] "
                                      "with OPTION among compile, foreach, loop, nosync, slices, graphs, cl, nocl "
                                      "(default reference,ours)")
    t.add_argument("--compile", action="store_true", help="add the ours+compile variant")
    t.add_argument("--compile-backend", help="of the compile option (inductor; aot_eager: no kernels built)")
    t.add_argument("--profile", type=int, metavar="STEPS",
                   help="a torch.profiler summary of STEPS steps per variant (paper preset: 10; 0: none)")
    t.set_defaults(func=run_train)

    e = bsub.add_parser("eval", help="center / dense / multi-crop evaluation images/s at several Q")
    _common(e)
    _model_args(e)
    add_crop_size(e)
    e.add_argument("--scales", help="test scales Q, comma-separated (paper preset: 256,384,512)")
    e.add_argument("--protocols", help="comma-separated among center, dense, multicrop")
    e.add_argument("--crop-batch", type=int, help="multi-crop: crops per forward pass")
    e.add_argument("--no-reference", action="store_true")
    e.set_defaults(func=run_eval)

    x = bsub.add_parser("e2e", help="end-to-end training from JPEG files: our loader + loop vs "
                                    "ImageFolder + PIL transforms + DataLoader + plain loop")
    _common(x)
    _model_args(x)
    x.add_argument("--images", type=int, help="JPEG files to generate (ImageNet-sized, ~500x375)")
    x.add_argument("--classes", type=int, help="class folders")
    add_data(x, dest="data_dir", help="where the JPEGs live (made if missing; default: a temporary folder)")
    add_workers(x, what="loader (both sides)")
    add_crop_size(x)
    x.add_argument("--scale-min", type=int, help="scale jittering S range (paper: 256)")
    x.add_argument("--scale-max", type=int, help="(paper: 512)")
    add_amp(x, default=None, default_text="the preset's")
    x.add_argument("--prefetch", type=int, help="batches each worker keeps ready (both sides; default 2)")
    x.add_argument("--variants", help="comma-separated: reference[+timm][+jitter: our transform], ours, "
                                      "ours+gpudecode, ours+OPTION (default: all but reference+jitter)")
    x.set_defaults(func=run_e2e)

    d = bsub.add_parser("data", help="data pipeline alone: images/s per worker, ours vs torchvision")
    _common(d)
    d.add_argument("--images", type=int, help="JPEG files to generate (default 400)")
    add_batch_size(d, what="images per batch")
    add_data(d, dest="data_dir", help="where the JPEGs live (made if missing; default: a temporary folder)")
    d.add_argument("--scale-min", type=int, help="scale jittering S range (default 256)")
    d.add_argument("--scale-max", type=int, help="(default 512)")
    add_crop_size(d, what="the training crop (default: 224)")
    d.set_defaults(func=run_data)

    m = bsub.add_parser("parallel", help="training images/s of each parallel mode on CPU processes (gloo), "
                                         "1 vs N processes")
    add_model(m, help="configuration or registry name (default: A)")
    m.set_defaults(model="A")
    m.add_argument("--width", type=float, default=0.25, help="channel width multiplier")
    add_crop_size(m, default=64, what="the net's input side")
    add_batch_size(m, default=32)
    m.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    add_devices(m, default=2, what="devices the parallel modes run on, one process each (CPU processes under gloo)")
    m.add_argument("--microbatches", type=int, default=4, help="pipeline micro-batches")
    m.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    m.add_argument("--timeout", type=float, default=600, help="seconds per mode")
    add_device(m, default="cpu")  # cuda: rank r on GPU r % the GPUs it sees (all on one if there is one)
    m.add_argument("--backend", default="gloo", help="gloo (default: runs anywhere), nccl, auto")
    add_amp(m, default="none")
    add_json(m)
    m.set_defaults(func=run_parallel)

    a = bsub.add_parser("all", help="train, eval, e2e and data in one run, one table")
    _common(a)
    a.add_argument("--skip", default="", help="comma-separated benches to leave out (train,eval,e2e,data)")
    a.set_defaults(func=run_all)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


# --- running ----------------------------------------------------------------------------------

def _overrides(args, mapping: dict[str, str]) -> dict:
    """Config fields given on the command line (``None`` means: keep the preset's)."""
    out = {}
    for arg, field in mapping.items():
        value = getattr(args, arg, None)
        if value is not None:
            out[field] = value
    return out


_RUN_ARGS = {"device": "device", "steps": "steps", "warmup": "warmup", "repeats": "repeats",
             "min_seconds": "min_seconds"}


def _config(cls, args, extra: dict[str, str]):
    fields = _overrides(args, {**_RUN_ARGS, **extra})
    if args.preset == "paper":
        fields.setdefault("device", "cuda")
        return cls.for_gpu(**fields)
    return dataclasses.replace(cls(), **fields)


def train_config(args):
    from verydeep.bench.train_step import TrainBenchConfig

    cfg = _config(TrainBenchConfig, args, {"model": "model", "width": "width", "batch_size": "batch_size",
                                           "crop_size": "image_size", "amp": "amp", "accum": "accum",
                                           "variants": "variants", "profile": "profile_steps",
                                           "compile_backend": "compile_backend"})
    if getattr(args, "compile", False) and "ours+compile" not in cfg.variants.split(","):
        cfg = dataclasses.replace(cfg, variants=cfg.variants + ",ours+compile")
    return cfg


def eval_config(args):
    from verydeep.bench.evaluation import EvalBenchConfig

    cfg = _config(EvalBenchConfig, args, {"model": "model", "width": "width", "batch_size": "batch_size",
                                          "crop_size": "crop_size", "scales": "scales",
                                          "protocols": "protocols", "crop_batch": "crop_batch"})
    if getattr(args, "no_reference", False):
        cfg = dataclasses.replace(cfg, reference=False)
    return cfg


def e2e_config(args):
    from verydeep.bench.end_to_end import E2EBenchConfig

    return _config(E2EBenchConfig, args, {"model": "model", "width": "width", "batch_size": "batch_size",
                                          "images": "images", "classes": "classes", "data_dir": "data_dir",
                                          "workers": "workers", "crop_size": "crop_size",
                                          "scale_min": "scale_min", "scale_max": "scale_max", "amp": "amp",
                                          "variants": "variants", "prefetch": "prefetch"})


def _setup(args):
    import torch

    from verydeep.bench.common import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device or ("cuda" if args.preset == "paper" else None))
    return device


def _finish(args, device, results, configs: dict) -> int:
    from verydeep.bench.common import machine_info
    from verydeep.bench.peak import matmul_peak
    from verydeep.bench.report import attach_ratios, format_table, to_json

    peak = None if args.no_peak else matmul_peak(device)
    attach_ratios(results, peak["tflops"] if peak else None)
    machine = machine_info(device)
    table = format_table(results, peak=peak, machine=machine)
    if args.json != "-":  # --json alone: the JSON replaces the table on stdout
        print(table, end="")
    if args.markdown:
        from pathlib import Path

        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table)
    if args.json:
        cfgs = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in configs.items()}
        emit_json({**to_json(results, peak=peak, machine=machine, config={**cfgs, "argv": sys.argv[1:]}),
                   "complete": True}, args.json)
    return 0


def _progress(args, device, configs: dict):
    """A callback writing the rows so far to ``--json`` (marked ``"complete": false``), so a
    run cut short (a time-out) keeps what it measured; None without a JSON file."""
    if not args.json or args.json == "-":
        return None
    from verydeep.bench.common import machine_info
    from verydeep.bench.report import attach_ratios, to_json

    machine = machine_info(device)
    cfgs = {k: dataclasses.asdict(v) for k, v in configs.items()}

    def write(rows) -> None:
        attach_ratios(rows)
        emit_json({**to_json(rows, machine=machine, config={**cfgs, "argv": sys.argv[1:]}), "complete": False},
                  args.json)

    return write


def run_train(args) -> int:
    from verydeep.bench.train_step import run_train_bench

    device = _setup(args)
    cfg = train_config(args)
    return _finish(args, device, run_train_bench(cfg, _progress(args, device, {"train": cfg})), {"train": cfg})


def run_eval(args) -> int:
    from verydeep.bench.evaluation import run_eval_bench

    device = _setup(args)
    cfg = eval_config(args)
    return _finish(args, device, run_eval_bench(cfg, _progress(args, device, {"eval": cfg})), {"eval": cfg})


def run_e2e(args) -> int:
    from verydeep.bench.end_to_end import run_e2e_bench

    device = _setup(args)
    cfg = e2e_config(args)
    return _finish(args, device, run_e2e_bench(cfg, _progress(args, device, {"e2e": cfg})), {"e2e": cfg})


def _data_results(args, device):
    """The data-pipeline bench (``verydeep.bench.data_pipeline``), one row per pipeline.

    It times each pipeline in this process with one thread, i.e. images/s per loader worker;
    ``--repeats`` is its number of rounds (the figure is the median round).
    """
    from verydeep.bench.common import BenchResult, peak_memory_mb
    from verydeep.bench.data_pipeline import REFERENCE_OF, run_data_pipeline_bench

    kwargs = _overrides(args, {"images": "images", "batch_size": "batch_size", "data_dir": "data_dir",
                               "repeats": "rounds", "scale_min": "scale_min", "scale_max": "scale_max",
                               "crop_size": "crop"})
    report = run_data_pipeline_bench(**kwargs)
    batch = report["setup"]["batch_size"]
    # Each of ours is compared with the reference doing the same transform, same output dtype.
    refs = REFERENCE_OF
    rows = []
    for name, ips in report["images_per_s_per_worker"].items():
        rows.append(BenchResult(bench="data", variant=name, images_per_s=ips, ms_per_step=1000 * batch / ips,
                                batch_size=batch, peak_memory_mb=peak_memory_mb(device),
                                samples=report["rounds"][name], reference=refs.get(name),
                                notes="images/s per worker (one process, one thread)" + _round_ratios(report, name)))
    return rows


def _round_ratios(report: dict, name: str) -> str:
    from verydeep.bench.data_pipeline import REFERENCE_OF

    spread = report["ratio_per_round"].get(name)
    if not spread:
        return ""
    return (f"; ours / {REFERENCE_OF[name]} per round: median {spread['median']:.2f}x, "
            f"{spread['min']:.2f}-{spread['max']:.2f}x")


def run_data(args) -> int:
    device = _setup(args)
    return _finish(args, device, _data_results(args, device), {"data": {"argv": sys.argv[1:]}})


def run_parallel(args) -> int:
    from verydeep.bench.parallel import ParallelBenchConfig, run_parallel_bench

    cfg = ParallelBenchConfig(model=args.model, width=args.width, crop=args.crop_size, batch=args.batch_size,
                              steps=args.steps, world=args.devices, microbatches=args.microbatches,
                              threads=args.threads, timeout=args.timeout, device=args.device,
                              backend=args.backend, amp=args.amp)
    def write(rows: list[dict], complete: bool) -> None:  # after every mode: a time-out keeps the rows
        if args.json:
            emit_json({"config": dataclasses.asdict(cfg), "results": rows, "complete": complete}, args.json)

    rows = run_parallel_bench(cfg, echo=lambda line: print(line, flush=True),
                              progress=lambda rows: write(rows, False))
    write(rows, True)
    return 1 if any(row["error"] for row in rows) else 0


def run_all(args) -> int:
    from verydeep.bench.end_to_end import run_e2e_bench
    from verydeep.bench.evaluation import run_eval_bench
    from verydeep.bench.train_step import run_train_bench

    device = _setup(args)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    results, configs = [], {}
    if "train" not in skip:
        configs["train"] = train_config(args)
        results += run_train_bench(configs["train"])
    if "e2e" not in skip:
        configs["e2e"] = e2e_config(args)
        results += run_e2e_bench(configs["e2e"])
    if "eval" not in skip:
        configs["eval"] = eval_config(args)
        results += run_eval_bench(configs["eval"])
    if "data" not in skip:
        results += _data_results(args, device)
    return _finish(args, device, results, configs)
