"""One reproduction, start to end: plan the chain, train it, evaluate the tables, write the
report; or, for ``--dry-run``, print the plan with its estimated cost."""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from verydeep.evaluate.protocols import methods_of
from verydeep.evaluate.scales import resolve_scales
from verydeep.parallel.distributed import barrier, init_distributed
from verydeep.reproduce.chain import PlannedRun, plan_chain
from verydeep.reproduce.estimate import (
    EVAL_SPEEDUP,
    SCALING_EFFICIENCY,
    Throughput,
    eval_gpu_hours,
    gpu_hours,
    round_up,
    training_images,
    wall_clock_hours,
)
from verydeep.reproduce.findings import check_findings
from verydeep.reproduce.profiles import Profile, all_departures, describe_data
from verydeep.reproduce.report import write_report
from verydeep.reproduce.runner import EvalSettings, evaluate_cells, train_chain
from verydeep.reproduce.tables import TABLES, cells_of
from verydeep.runtime import precision_of

log = logging.getLogger(__name__)


@dataclass
class Request:
    profile: Profile
    data: Path
    out: Path
    tables: tuple[int, ...] = TABLES
    device: str = "auto"
    progress: bool = True
    command: str = "reproduce()"  # as the report quotes it
    amp: str = "auto"  # training and evaluation precision (verydeep.runtime): none = exact fp32, TF32 off
    dense_pooling: str | None = None  # dense evaluation's max-pool rounding, floor | ceil; None: the profile's

    def __post_init__(self) -> None:
        if self.dense_pooling is None:
            self.dense_pooling = self.profile.dense_pooling


def plan_for(req: Request) -> list[PlannedRun]:
    """The runs the requested tables need, in dependency order, with their status."""
    wanted = {e.run for cell in cells_of(req.tables) for e in cell.evals}
    plan = plan_chain(req.profile, req.data, req.out, wanted)
    if req.amp != "auto":  # the recipes' own train.amp is auto; a finished run keeps what it had
        for run in plan:
            run.overrides.append(f"train.amp={req.amp}")
    return plan


def training_precision(plan: list[PlannedRun], cuda: bool) -> str:
    """The precision the runs train in (on CUDA when ``cuda`` and a run does not ask for the CPU)."""
    texts = {precision_of(cfg.train.amp, "cuda" if cuda and cfg.train.device != "cpu" else "cpu")
             for cfg in (run.config() for run in plan)}
    return "; ".join(sorted(texts)) or "-"


def departures_of(req: Request, plan: list[PlannedRun], cuda: bool, data: str | None = None) -> list:
    eval_device = "cpu" if req.device == "cpu" or not cuda else "cuda"
    return all_departures(req.profile, training_precision(plan, cuda), precision_of(req.amp, eval_device),
                          req.dense_pooling, data)


def data_counts(req: Request, plan: list[PlannedRun]) -> str | None:
    """The data's classes and images in words, None when there is no data to count."""
    from verydeep.data import discover

    if not req.data.exists() or not plan:
        return None
    splits = discover(plan[0].config().data)
    return describe_data(len(splits.classes), len(splits.train) + len(splits.holdout), len(splits.val),
                         len(splits.holdout))


def ensure_dataset(req: Request) -> None:
    """A profile with its own dataset (mini) writes it to ``--data`` when nothing is there."""
    if req.profile.dataset is None or (req.data / "train").is_dir():
        return
    from verydeep.data import make_demo_dataset

    t = time.perf_counter()
    log.info("%s has no dataset: writing the %s profile's (demo generator, %s)", req.data, req.profile.name,
             req.profile.dataset)
    make_demo_dataset(req.data, progress=req.progress, **req.profile.dataset)
    log.info("dataset written in %.0f s", time.perf_counter() - t)


def epochs_text(cfg) -> str:
    """A run's epochs as the plan states them: under the plateau rule a cap the rule may end earlier."""
    if cfg.schedule.name == "plateau" and cfg.schedule.max_decreases:
        return (f"up to {cfg.train.epochs} epochs (the plateau rule ends it at the first plateau after "
                f"{cfg.schedule.max_decreases} LR decreases)")
    return f"{cfg.train.epochs} epochs"


def describe_plan(req: Request, throughput: Throughput | None = None, devices: int = 1) -> str:
    """The plan as text: order, runs, where each starts from, status, precision, departures;
    with ``throughput`` the GPU-hours of each run and of each table's evaluation, the
    wall-clock hours on ``devices`` devices, and the command that launches them."""
    plan = plan_for(req)
    counts = _image_counts(req, plan)
    estimate = throughput is not None and counts is not None
    cuda = req.profile.name == "imagenet" or torch.cuda.is_available()  # the imagenet plan is a GPU plan
    lines = [(f"profile {req.profile.name}: {len(plan)} runs for Tables {', '.join(map(str, req.tables))}, "
              f"in this order (data {req.data}, runs under {req.out}):")]
    total = 0.0
    for i, run in enumerate(plan, 1):
        cfg = run.config()
        start = f"{run.link}={run.depends_on}/best.pt" if run.depends_on else f"scratch ({cfg.model.init} init)"
        if cfg.model.freeze_convs:
            start += ", FC layers only"
        line = (f"{i:2d}. {run.name:<25} net {run.net:<5} S={cfg.data.scale_min}"
                f"{'' if cfg.data.scale_max == cfg.data.scale_min else f'-{cfg.data.scale_max}'}  from {start}; "
                f"{epochs_text(cfg)}, batch {cfg.train.batch_size}, lr {cfg.optim.lr:g}  [{run.status}]")
        if estimate:
            hours = round_up(gpu_hours(cfg, counts[0], throughput))
            total += hours
            line += f"  <= {hours:,.1f} GPU-h (<= {training_images(cfg, counts[0]) / 1e6:.2f}M images)"
        lines.append(line)
    lines.append(f"batch sizes are global: under torchrun each of the W processes takes batch/W images per step "
                 f"and gradients are averaged, so a run takes the same steps on any number of devices (the paper's "
                 f"256 split over 4 GPUs)")
    lines.append(f"precision: training {training_precision(plan, cuda)}; evaluation "
                 f"{precision_of(req.amp, 'cuda' if cuda and req.device != 'cpu' else 'cpu')} (--amp {req.amp}"
                 + ("" if req.amp == "none" else "; --amp none: fp32 with TF32 off, the paper's arithmetic") + ")")
    lines.append("departures from the paper (the report lists them with their reasons):")
    lines += [f"  - {d.what}" for d in departures_of(req, plan, cuda, data_counts(req, plan))]
    if estimate:
        lines += _evaluation_estimate(req, plan, counts[1], throughput, total, devices)
    elif req.profile.name == "imagenet":
        lines.append("GPU-hours: give a measured throughput (--images-per-s N, or --bench FILE from "
                     "`verydeep bench train --preset paper --json FILE`) for an estimate")
    lines.append(f"then evaluations for Tables {', '.join(map(str, req.tables))} and {req.out / 'report.md'}")
    lines.append(f"launch on {devices} device(s): {launch_command(req, devices)}")
    return "\n".join(lines)


def _evaluation_estimate(req: Request, plan: list[PlannedRun], val_images: int, throughput: Throughput,
                         train_total: float, devices: int) -> list[str]:
    """Lines: evaluation GPU-hours per table (each net's passes counted at the first table that
    needs them: the evaluator runs each once), the totals and how wall-clock follows."""
    configs = {run.name: run.config() for run in plan}
    done: set[tuple[str, str, int]] = set()
    lines, eval_total = [], 0.0
    for table in req.tables:
        passes = []
        for cell in cells_of([table]):
            for e in cell.evals:
                cfg = configs[e.run]
                for q in resolve_scales(cfg.data, e.scales):
                    for method in methods_of(e.protocol):
                        if (e.run, method, q) not in done:
                            done.add((e.run, method, q))
                            passes.append((cfg, method, q))
        hours = round_up(eval_gpu_hours(passes, val_images, throughput)) if passes else 0.0
        eval_total += hours
        lines.append(f"evaluation, Table {table}: {len(passes)} passes over {val_images:,} validation images, "
                     f"<= {hours:,.1f} GPU-h (forward MACs of each protocol at its Q)")
    total = train_total + eval_total
    lines.append(
        f"total <= {total:,.1f} GPU-hours (training {train_total:,.1f}, evaluation {eval_total:,.1f}), "
        f"<= {round_up(wall_clock_hours(total, devices)):,.1f} h wall-clock on {devices} device(s): the runs one "
        f"after another, each on all {devices} (GPU-hours / devices"
        f"{'' if devices <= 1 else f' / {SCALING_EFFICIENCY:.4f}, the paper measured 3.75x on 4 GPUs'}); "
        f"{throughput.images_per_s:,.0f} training images/s of {throughput.model} at {throughput.crop} px from "
        f"{throughput.source}, other nets scaled by forward MACs, evaluation at {EVAL_SPEEDUP:g}x that rate in "
        f"MACs; the plateau rule may stop runs earlier")
    return lines


LAUNCHER = "python -m verydeep.parallel.launch"  # torchrun's arguments, one line on SIGTERM (exit 143)


def launch_command(req: Request, devices: int, gpus_per_node: int = 8) -> str:
    """The command line that runs this reproduction on ``devices`` GPUs: torchrun on one node,
    or one torchrun per node under SLURM (``--out`` on a shared file system); torchrun through
    ``verydeep.parallel.launch`` (the same arguments), which ends a preempted job with exit 143
    and one line instead of torchrun's traceback."""
    args = (f"-m verydeep reproduce --profile {req.profile.name} --data {req.data} --out {req.out}"
            + ("" if tuple(req.tables) == TABLES else f" --tables {','.join(map(str, req.tables))}")
            + ("" if req.amp == "auto" else f" --amp {req.amp}"))
    if devices <= 1:
        return "python " + args
    if devices <= gpus_per_node:
        return f"{LAUNCHER} --standalone --nproc_per_node {devices} {args}"
    nodes = math.ceil(devices / gpus_per_node)
    if devices % gpus_per_node:
        return (f"{devices} devices do not fill nodes of {gpus_per_node}: use a multiple of {gpus_per_node} "
                f"(e.g. {nodes * gpus_per_node}) for SLURM, see docs/reproduction.md")
    return (f"sbatch --nodes {nodes} --ntasks-per-node 1 --gpus-per-node {gpus_per_node} --signal=TERM@300 "
            f"--wrap 'srun {LAUNCHER} --nnodes {nodes} --nproc_per_node {gpus_per_node} --rdzv_backend c10d "
            f"--rdzv_id $SLURM_JOB_ID --rdzv_endpoint $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1):29500 "
            f"{args}' (--out on a shared file system)")


def _image_counts(req: Request, plan: list[PlannedRun]) -> tuple[int, int] | None:
    """(training images, validation images) of the data, None when there is none to count."""
    from verydeep.data import discover

    if not req.data.exists() or not plan:
        return None
    splits = discover(plan[0].config().data)
    return len(splits.train), len(splits.val)


def reproduce(req: Request) -> list[Path]:
    """Train what is missing, evaluate the tables, write the report; returns the report's files.

    Under torchrun every process runs this: training is data parallel (the global batch
    unchanged), evaluation shards the images, and rank 0 alone logs, writes the dataset, the
    evaluation cache and the report."""
    t0 = time.perf_counter()
    if req.profile.torch_threads:
        # 2 cores: one for the training process, one for its loader worker (mini profile)
        torch.set_num_threads(req.profile.torch_threads)
    dist = init_distributed(req.device)
    if not dist.is_main:  # one log under torchrun: the other ranks say only what goes wrong
        logging.getLogger("verydeep").setLevel(logging.WARNING)
    if dist.is_main:
        ensure_dataset(req)
    barrier()
    plan = plan_for(req)
    log.info("plan: %s", ", ".join(f"{r.name} [{r.status}]" for r in plan))
    if dist.distributed:
        log.info("%d processes: each run's batch is global (each process takes batch/%d)", dist.world_size,
                 dist.world_size)
    summary = train_chain(plan)
    for run in plan:
        summary[run.name]["depends_on"] = run.depends_on
    t_eval = time.perf_counter()
    settings = EvalSettings(data_root=req.data, runs_dir=req.out, eval_dir=req.out / "eval",
                            batch_size=req.profile.eval_batch_size, device=req.device, progress=req.progress,
                            amp=req.amp, dense_pooling=req.dense_pooling)
    results = evaluate_cells(cells_of(req.tables), settings)
    findings = check_findings(results.errors(), results.correct)
    cuda = settings.runtime().device.type == "cuda"
    meta = _meta(req, plan, results.images, summary, time.perf_counter() - t0, time.perf_counter() - t_eval)
    meta["precision"] = (f"training {training_precision(plan, torch.cuda.is_available())}; evaluation "
                         f"{settings.runtime().precision()}")
    meta["dense pooling"] = req.dense_pooling
    meta["processes"] = dist.world_size
    meta["data counts"] = data_counts(req, plan)
    departures = departures_of(req, plan, cuda, meta["data counts"])
    files: list[Path] = []
    if dist.is_main:
        files = write_report(req.out, req.profile, meta, results.cells, findings, summary, departures)
    barrier()
    return files


def _meta(req: Request, plan: list[PlannedRun], images: int, summary: dict, wall: float, eval_s: float) -> dict:
    train_s = sum(r.get("train_seconds", 0.0) for r in summary.values())
    trained_now = [name for name, r in summary.items() if r.get("status") != "finished"]
    return {
        "command": req.command,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "data": f"{req.data} ({images} validation images evaluated)",
        "wall time of this call": f"{wall / 60:.1f} min (training {len(trained_now)} of {len(plan)} runs, "
                                  f"evaluation {eval_s / 60:.1f} min)",
        "training time, all runs, all attempts": f"{train_s / 60:.1f} min",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"{torch.get_num_threads()} torch thread(s) (+ the loader's worker processes), load average "
                   f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
    }


def parse_tables(value: str | Iterable[int]) -> tuple[int, ...]:
    values = [int(v) for v in value.split(",")] if isinstance(value, str) else list(value)
    cells_of(values)  # unknown tables are refused here, with the known ones named
    return tuple(sorted(set(values)))
