"""One reproduction, start to end: plan the chain, train it, evaluate the tables, write the
report; or, for ``--dry-run``, print the plan with its estimated cost."""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from verydeep.reproduce.chain import PlannedRun, plan_chain
from verydeep.reproduce.estimate import Throughput, gpu_hours, training_images
from verydeep.reproduce.findings import check_findings
from verydeep.reproduce.profiles import Profile
from verydeep.reproduce.report import write_report
from verydeep.reproduce.runner import EvalSettings, evaluate_cells, train_chain
from verydeep.reproduce.tables import TABLES, cells_of

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


def plan_for(req: Request) -> list[PlannedRun]:
    """The runs the requested tables need, in dependency order, with their status."""
    wanted = {e.run for cell in cells_of(req.tables) for e in cell.evals}
    return plan_chain(req.profile, req.data, req.out, wanted)


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


def describe_plan(req: Request, throughput: Throughput | None = None, devices: int = 1) -> str:
    """The plan as text: order, runs, where each starts from, status; with ``throughput`` (imagenet)
    the GPU-hours per run and in all, and the wall-clock hours on ``devices`` devices."""
    plan = plan_for(req)
    train_images = _train_images(req, plan) if throughput else None
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
                f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size}, lr {cfg.optim.lr:g}  [{run.status}]")
        if throughput and train_images:
            hours = gpu_hours(cfg, train_images, throughput)
            total += hours
            line += f"  ~{hours:,.1f} GPU-h (<= {training_images(cfg, train_images) / 1e6:.1f}M images)"
        lines.append(line)
    if throughput and train_images:
        lines.append(f"total ~{total:,.0f} GPU-hours at most, ~{total / devices:,.0f} h wall-clock on {devices} "
                     f"device(s) ({train_images:,} training images; {throughput.images_per_s:,.0f} images/s of "
                     f"{throughput.model} at {throughput.crop} px from {throughput.source}, other nets scaled by "
                     f"forward MACs; the plateau rule may stop runs earlier)")
    elif req.profile.name == "imagenet":
        lines.append("GPU-hours: give a measured throughput (--images-per-s N, or --bench FILE from "
                     "`verydeep bench train --preset paper --json FILE`) for an estimate")
    lines.append(f"then evaluations for Tables {', '.join(map(str, req.tables))} and {req.out / 'report.md'}")
    return "\n".join(lines)


def _train_images(req: Request, plan: list[PlannedRun]) -> int | None:
    from verydeep.data import discover

    if not req.data.exists() or not plan:
        return None
    return len(discover(plan[0].config().data).train)


def reproduce(req: Request) -> list[Path]:
    """Train what is missing, evaluate the tables, write the report; returns the report's files."""
    t0 = time.perf_counter()
    if req.profile.torch_threads:
        # 2 cores: one for the training process, one for its loader worker (mini profile)
        torch.set_num_threads(req.profile.torch_threads)
    ensure_dataset(req)
    plan = plan_for(req)
    log.info("plan: %s", ", ".join(f"{r.name} [{r.status}]" for r in plan))
    summary = train_chain(plan)
    for run in plan:
        summary[run.name]["depends_on"] = run.depends_on
    t_eval = time.perf_counter()
    results = evaluate_cells(cells_of(req.tables), EvalSettings(
        data_root=req.data, runs_dir=req.out, eval_dir=req.out / "eval", batch_size=req.profile.eval_batch_size,
        device=req.device, progress=req.progress))
    findings = check_findings(results.errors(), results.correct)
    meta = _meta(req, plan, results.images, summary, time.perf_counter() - t0, time.perf_counter() - t_eval)
    return write_report(req.out, req.profile, meta, results.cells, findings, summary)


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
