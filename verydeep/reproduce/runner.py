"""Carry out a reproduction plan: train the chain (skipping finished runs, resuming interrupted
ones), evaluate every table cell (once per net, results cached next to the runs), fuse saved
posteriors for Table 6.

Everything on disk lives under the output folder: a folder per run (as ``verydeep train``
writes it, plus ``reproduce.json``: the training time spent on it so far), ``eval/`` (per
net: the rows as JSON, the posterior store Table 6 fuses), and the report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path


from verydeep.data import discover
from verydeep.errors import Interrupted
from verydeep.evaluate import EvalOptions, RowSpec, evaluate_rows, load_eval_net
from verydeep.evaluate.posterior_store import INDEX
from verydeep.evaluate.store_fusion import fuse_stores
from verydeep.reproduce.chain import DONE, INTERRUPTED, PlannedRun, run_status
from verydeep.reproduce.tables import Cell, Eval, evaluations_by_run
from verydeep.parallel.distributed import barrier, current
from verydeep.runtime import build_runtime
from verydeep.train.loop import train

log = logging.getLogger(__name__)

RUN_RECORD = "reproduce.json"  # in each run folder: {"train_seconds": ...}
# In each cached row: top-1 correct per validation image ("1"/"0", the data's image order),
# what the findings' paired tests read.
CORRECT = "top1_correct"


def correct_string(hits) -> str:
    return "".join("1" if h else "0" for h in hits.tolist())


def _record(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def train_chain(plan: list[PlannedRun]) -> dict[str, dict]:
    """Train every run of ``plan`` in order that has not finished; per run: its summary (status
    before this call, training seconds over all attempts, what the training returned)."""
    summary = {}
    for run in plan:
        record = _record(run.run_dir)
        if run.status == DONE:
            log.info("%s: finished earlier, skipped", run.name)
            summary[run.name] = {**record, "status": run.status}
            continue
        log.info("%s: %s (%s)", run.name, "resuming" if run.status == INTERRUPTED else "training",
                 f"from {run.depends_on}" if run.depends_on else "from scratch")
        t = time.perf_counter()
        try:
            result = train(run.config(), run.run_dir, resume="auto")
        except Interrupted as e:  # training's advice (--resume) is not this command's way to continue
            at = f" at step {e.step}" if e.step is not None else ""
            raise Interrupted(e.signal_name, f"{run.name} interrupted by {e.signal_name}{at}: checkpoint "
                                             f"{run.run_dir / 'last.pt'} written; run the same verydeep reproduce "
                                             f"command again to resume it (finished runs are skipped)",
                              step=e.step) from None
        finally:  # an interrupted attempt's time counts too
            record["train_seconds"] = record.get("train_seconds", 0.0) + time.perf_counter() - t
            if run.run_dir.is_dir() and current().is_main:
                (run.run_dir / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        record.update(stopped_because=result.stopped_because, best_top1_error=result.best_top1_error,
                      epochs=result.epochs_done, steps=result.steps)
        if current().is_main:
            (run.run_dir / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        summary[run.name] = {**record, "status": run.status}
        run.status = run_status(run.run_dir)
    return summary


@dataclass
class EvalSettings:
    data_root: Path
    runs_dir: Path  # the output folder: one folder per run
    eval_dir: Path
    batch_size: int = 32
    device: str = "auto"
    progress: bool = True
    amp: str = "auto"  # verydeep.runtime: none = exact fp32 (TF32 off)
    dense_pooling: str = "floor"  # dense evaluation's max-pool rounding (verydeep.models.fully_convolutional)

    def runtime(self):
        return build_runtime(self.device, self.amp, local_rank=current().local_rank)


def _stamp(checkpoint: Path) -> list[int]:
    stat = checkpoint.stat()
    return [stat.st_mtime_ns, stat.st_size]


def evaluate_run(run_dir: Path, wanted: dict[Eval, bool], settings: EvalSettings) -> dict[Eval, dict]:
    """The table rows of one net (``wanted``: evaluation -> keep its posteriors), read from
    ``eval/<run>.json`` when that was computed from the same ``best.pt``, else evaluated in one
    sweep (one read of the data per test scale for all protocols)."""
    name = run_dir.name
    cache, posteriors = settings.eval_dir / f"{name}.json", settings.eval_dir / f"{name}.posteriors"
    stamp = _stamp(run_dir / "best.pt")
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = {}
    rows = {Eval(name, r["protocol"], r["which"]): r for r in cached.get("rows", [])}
    fresh = (cached.get("checkpoint") == stamp and cached.get("dense_pooling", "floor") == settings.dense_pooling
             and cached.get("amp", "auto") == settings.amp)  # evaluated as asked, or again
    if (fresh and all(e in rows and CORRECT in rows[e] for e in wanted)
            and ((posteriors / INDEX).is_file() or not any(wanted.values()))):
        return {e: rows[e] for e in wanted}
    net = load_eval_net(run_dir)
    data_cfg = dataclasses.replace(net.data, root=str(settings.data_root))
    splits = discover(data_cfg)
    samples = splits.val
    evals = list(wanted)
    specs = [RowSpec.for_nets(e.protocol, [net.data], e.scales) for e in evals]
    t = time.perf_counter()
    runtime = settings.runtime()
    runtime.apply_tf32()
    result = evaluate_rows([net], data_cfg, samples, specs, classes=splits.classes,
                           options=EvalOptions(batch_size=settings.batch_size, progress=settings.progress,
                                               amp=settings.amp, dense_pooling=settings.dense_pooling),
                           runtime=runtime, save_posteriors=posteriors if any(wanted.values()) else None)
    log.info("%s: %d evaluations in %.0f s (%s)", name, len(evals), time.perf_counter() - t, runtime.precision())
    rows = {e: {**r.row, "which": e.scales, "posteriors_row": i, CORRECT: correct_string(r.hits[:, 0])}
            for i, (e, r) in enumerate(zip(evals, result.results))}
    if current().is_main:  # under torchrun every rank holds the whole result; rank 0 writes it
        settings.eval_dir.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"checkpoint": stamp, "seconds": time.perf_counter() - t,
                                     "dense_pooling": settings.dense_pooling, "amp": settings.amp,
                                     "precision": runtime.precision(), "rows": list(rows.values())},
                                    indent=2) + "\n")
    barrier()  # the other ranks read the store rank 0 kept (Table 6)
    return rows


@dataclass
class TableResults:
    """Our numbers per table cell, (table, row, column) -> the row as the evaluator reports it."""

    cells: dict[tuple[int, str, str], dict] = field(default_factory=dict)
    images: int = 0
    correct: dict[tuple[int, str, str], list[bool]] = field(default_factory=dict)  # top-1 per image

    def errors(self) -> dict[tuple[int, str, str], tuple[float, float]]:
        return {k: (r["top1_error"], r["top5_error"]) for k, r in self.cells.items()}


def evaluate_cells(cells: list[Cell], settings: EvalSettings) -> TableResults:
    """Every cell of ``cells``: single nets from their evaluations, fusions from saved posteriors."""
    by_run = {run: evaluate_run(settings.runs_dir / run, wanted, settings)
              for run, wanted in evaluations_by_run(cells).items()}
    out = TableResults()
    for cell in cells:
        if cell.fused:
            stores = [f"{settings.eval_dir / e.run}.posteriors#{by_run[e.run][e]['posteriors_row']}"
                      for e in cell.evals]
            row, _, fused = fuse_stores(stores)
            correct = fused.hits[:, 0].tolist()  # an image undecodable in any member counts as wrong
        else:
            (e,) = cell.evals
            row = dict(by_run[e.run][e])
            correct = [c == "1" for c in row.pop(CORRECT)]
        out.cells[(cell.table, cell.row, cell.column)] = row
        out.correct[(cell.table, cell.row, cell.column)] = correct
        out.images = max(out.images, row["images"])
    return out
