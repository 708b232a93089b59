"""The training loop (the paper's Sec. 3.1), readable top to bottom.

config -> data + model -> this loop -> checkpoints and metrics. Parallel modes wrap the same
model; the loop does not change with them.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from verydeep.config import Config, config_to_dict, save_config
from verydeep.data import build_train_loader, discover
from verydeep.models.from_config import model_from_config
from verydeep.parallel.distributed import all_reduce_sum, barrier, init_distributed
from verydeep.parallel.strategy import ParallelStrategy, build_strategy
from verydeep.train.checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from verydeep.train.metrics import MetricsLog, Progress
from verydeep.train.optim import build_optimizer
from verydeep.train.plot import plot_run
from verydeep.train.schedules import LRSchedule
from verydeep.train.validate import validate

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainResult:
    run_dir: Path
    is_main: bool
    epochs_done: int
    steps: int
    best_top1_error: float | None
    last_val: dict = field(default_factory=dict)
    stopped_because: str = ""
    bad_files: int = 0


def batch_plan(global_batch: int, world: int, micro: int | None) -> tuple[int, int]:
    """(per-process batch, accumulation steps) realising ``global_batch`` on ``world`` ranks."""
    if global_batch % world:
        raise ValueError(f"train.batch_size={global_batch} is not divisible by the {world} processes")
    per_process = global_batch // world
    micro = micro or per_process
    if per_process % micro:
        raise ValueError(
            f"train.micro_batch_size={micro} does not divide the per-process batch {per_process} "
            f"(batch_size {global_batch} over {world} processes)"
        )
    return per_process, per_process // micro


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "none"
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def _step_seed(seed: int, step: int, rank: int) -> int:
    # Dropout masks are a function of (seed, step, rank) only, so a resumed run draws exactly
    # the masks the uninterrupted run drew, whatever else consumed random numbers meanwhile.
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


class _StopFlag:
    """SIGTERM/SIGINT (preemption, Ctrl-C) ask the loop to checkpoint and leave at a step boundary."""

    def __init__(self) -> None:
        self.raised: str | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.raised:  # second signal: leave now
            raise KeyboardInterrupt
        self.raised = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False) -> TrainResult:
    dist = init_distributed(cfg.train.device, cfg.parallel.backend)
    run_dir = Path(out_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    torch.manual_seed(cfg.train.seed + dist.rank)
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # --- data -------------------------------------------------------------------------
    splits = discover(cfg.data)
    num_classes = len(splits.classes)
    if dist.world_size % cfg.parallel.pipeline_stages:
        raise ValueError(f"parallel.pipeline_stages={cfg.parallel.pipeline_stages} does not divide the "
                         f"{dist.world_size} processes")
    data_world = dist.world_size // cfg.parallel.pipeline_stages  # data-parallel replicas
    per_process, accum = batch_plan(cfg.train.batch_size, data_world, cfg.train.micro_batch_size)
    steps_per_epoch = len(splits.train) // cfg.train.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training set ({len(splits.train)} images)"
        )

    # --- model, optimiser, schedule ------------------------------------------------------
    ckpt_path = run_dir / "last.pt"
    state = load_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    if resume and state is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", run_dir)
    model = model_from_config(cfg.model, num_classes, cfg.data.crop_size)
    if state is not None:
        model.load_state_dict(state["model"])  # full, unsharded: any mode resumes any other
    channels_last = cfg.train.channels_last if cfg.train.channels_last is not None else dist.device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        model.compile()  # compiles forward in place; state-dict keys stay unchanged
    strategy = build_strategy(model, cfg.parallel, dist, crop_size=cfg.data.crop_size, accum=accum)
    optimizer = build_optimizer(strategy.local_module, cfg.optim, dist.device)
    amp_dtype = _amp_dtype(cfg.train.amp, dist.device)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=amp_dtype is torch.float16)
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, steps_per_epoch, cfg.train.epochs, cfg.train.max_iterations)

    epoch, step, batch_in_epoch, best, bad_total = 0, 0, 0, None, 0
    if state is not None:
        same_layout = (state.get("parallel_mode", "data_parallel") == strategy.mode == "data_parallel")
        if same_layout:
            optimizer.load_state_dict(state["optimizer"])
        else:
            log.warning("resuming %s from a %s checkpoint: weights restored, optimiser state (momentum) restarts",
                        strategy.mode, state.get("parallel_mode"))
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        epoch, step, batch_in_epoch = state["epoch"], state["step"], state["batch_in_epoch"]
        best, bad_total = state["best_top1_error"], state["bad_files"]
        set_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d, step %d (batch %d of the epoch)", ckpt_path, epoch, step, batch_in_epoch)
        if state.get("plateau_stopped"):
            log.info("the run had already finished (%s)", state.get("stopped_because"))

    if dist.is_main:
        save_config(cfg, run_dir / "config.yaml")
        log.info("parallelism: %s", strategy.describe())
        log.info("run %s: %d train / %d val images, %d classes (val layout: %s); %d steps/epoch, "
                 "global batch %d = %d process(es) x %d accumulation x %d", run_dir, len(splits.train),
                 len(splits.val), num_classes, splits.val_layout, steps_per_epoch, cfg.train.batch_size,
                 dist.world_size, accum, per_process // accum)
    metrics = MetricsLog(run_dir, enabled=dist.is_main, tensorboard=cfg.train.tensorboard)

    def checkpoint(name: str, *, finished: bool = False, why: str = "") -> None:
        weights = strategy.full_state_dict()  # collective: every rank takes part
        if not dist.is_main:
            return
        atomic_save({
            "model": weights,
            "spec": model.spec.to_dict(),
            "config": config_to_dict(cfg),
            "classes": list(splits.classes),
            "class_names": dict(splits.class_names),
            # Model-parallel optimiser state is sharded per rank (DTensors, stage-local tensors);
            # only the data-parallel state is complete on rank 0, so only it is kept.
            "optimizer": optimizer.state_dict() if strategy.mode == "data_parallel" else None,
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch, "step": step, "batch_in_epoch": batch_in_epoch,
            "best_top1_error": best, "bad_files": bad_total,
            "rng": rng_state(), "world_size": dist.world_size, "parallel_mode": strategy.mode,
            "finished": finished, "stopped_because": why, "plateau_stopped": schedule_stopped,
        }, run_dir / name)

    def run_validation(tag: str) -> dict:
        result = validate(strategy, cfg, splits, per_process_batch=cfg.train.val_batch_size or per_process,
                          amp_dtype=amp_dtype, channels_last=channels_last)
        record = {"kind": "val", "epoch": epoch, "step": step, **result, "tag": tag}
        metrics.write(record)
        if dist.is_main:
            log.info("val epoch %d step %d: loss %.4f top-1 error %.2f%% top-5 error %.2f%%%s", epoch, step,
                     result["val_loss"], result["val_top1_error"], result["val_top5_error"],
                     f" ({result['val_bad_images']} unreadable images counted as errors)" if result["val_bad_images"] else "")
        return result

    last_val: dict = {}
    stopped = ""
    schedule_stopped = False
    max_steps = min(cfg.train.epochs * steps_per_epoch, cfg.train.max_iterations or math.inf)
    loss_sum = torch.zeros((), device=dist.device)
    loss_count = 0
    with _StopFlag() as stop_flag:
        while epoch < cfg.train.epochs and step < max_steps and not stopped and not (state or {}).get("plateau_stopped"):
            strategy.train()
            loader = build_train_loader(cfg.data, splits.train, per_process, seed=cfg.train.seed, epoch=epoch,
                                        start_batch=batch_in_epoch, rank=strategy.data_rank,
                                        world_size=strategy.data_world,
                                        device=dist.device, channels_last=channels_last)
            progress = Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.train.epochs}", dist.is_main,
                                initial=batch_in_epoch, every=cfg.train.log_every)
            epoch_bad = 0
            t0, seen = time.perf_counter(), 0
            for images, labels, bad in loader:
                if batch_in_epoch >= steps_per_epoch:
                    break
                lr = schedule.lr(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                torch.manual_seed(_step_seed(cfg.train.seed, step, dist.rank))
                loss = _forward_backward(strategy, images, labels, amp_dtype, scaler, cfg.train.label_smoothing)
                if not torch.isfinite(loss):
                    if cfg.train.nonfinite == "skip":
                        log.warning("non-finite loss (%s) at step %d: step skipped", loss.item(), step)
                        optimizer.zero_grad(set_to_none=True)
                        metrics.write({"kind": "skipped", "epoch": epoch, "step": step})
                    else:
                        metrics.close()
                        raise NonFiniteLossError(
                            f"loss is {loss.item()} at step {step} (epoch {epoch + 1}, batch {batch_in_epoch}); "
                            f"stopped without saving: {run_dir / 'last.pt'} holds the last good state "
                            f"(set train.nonfinite=skip to skip such steps, or lower optim.lr)")
                else:
                    if cfg.optim.grad_clip:
                        scaler.unscale_(optimizer)
                        strategy.clip_grad_norm_(cfg.optim.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    loss_sum += loss.detach()
                    loss_count += 1
                step += 1
                batch_in_epoch += 1
                seen += images.shape[0] * strategy.data_world
                epoch_bad += len(bad)
                metrics.scalar("train/lr_per_step", lr, step)
                if step % cfg.train.log_every == 0 or batch_in_epoch == steps_per_epoch:
                    mean_loss = (loss_sum / max(1, loss_count)).item()
                    ips = seen / (time.perf_counter() - t0)
                    metrics.write({"kind": "train", "epoch": epoch, "step": step, "loss": mean_loss,
                                   "lr": lr, "images_per_s": round(ips, 1)})
                    progress.postfix = dict(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}")
                    loss_sum.zero_()
                    loss_count = 0
                progress.update(**getattr(progress, "postfix", {}))
                if cfg.train.val_every_steps and step % cfg.train.val_every_steps == 0 and batch_in_epoch < steps_per_epoch:
                    last_val = run_validation("in-epoch")
                    strategy.train()
                if cfg.train.checkpoint_every_steps and step % cfg.train.checkpoint_every_steps == 0:
                    checkpoint("last.pt")
                if stop_flag.raised or step >= max_steps:
                    break
            progress.close()
            bad_epoch = int(all_reduce_sum(torch.tensor(epoch_bad, device=dist.device)).item())
            bad_total += bad_epoch
            if bad_epoch and dist.is_main:
                log.warning("epoch %d: %d unreadable training images skipped (replacements drawn)", epoch + 1, bad_epoch)
            if stop_flag.raised:
                checkpoint("last.pt")
                stopped = f"interrupted by {stop_flag.raised}"
                if dist.is_main:
                    log.warning("%s: checkpoint written at step %d; continue with --resume", stopped, step)
                break
            epoch_done = batch_in_epoch >= steps_per_epoch
            last_val = run_validation("epoch")
            metrics.write({"kind": "epoch", "epoch": epoch, "step": step, "bad_files": bad_epoch})
            top1 = last_val["val_top1_error"]
            improved = best is None or top1 < best
            if epoch_done:
                epoch, batch_in_epoch = epoch + 1, 0
            action = schedule.on_validation(top1) if epoch_done else "n/a"
            if action == "decrease" and dist.is_main:
                log.info("val top-1 error stopped improving: LR divided by %g (decrease %d of %d)",
                         1 / cfg.schedule.factor, schedule.decreases, cfg.schedule.max_decreases)
            if action == "stop":
                schedule_stopped = True
                stopped = f"val top-1 error stopped improving after {schedule.decreases} LR decreases"
            elif epoch >= cfg.train.epochs:
                stopped = f"completed {epoch} epochs"
            elif step >= max_steps:
                stopped = f"reached {step} iterations (train.max_iterations={cfg.train.max_iterations})"
            if improved:
                best = top1
            checkpoint("last.pt", finished=bool(stopped), why=stopped)
            if improved:
                checkpoint("best.pt", finished=bool(stopped), why=stopped)
            barrier()
    metrics.close()
    if dist.is_main and cfg.train.plot and (run_dir / "metrics.jsonl").is_file():
        png = plot_run(run_dir)
        log.info("finished: %s; best val top-1 error %s%%; checkpoints %s, %s; metrics %s; plot %s",
                 stopped or "done", f"{best:.2f}" if best is not None else "n/a", run_dir / "best.pt",
                 run_dir / "last.pt", run_dir / "metrics.jsonl", png)
    return TrainResult(run_dir=run_dir, is_main=dist.is_main, epochs_done=epoch, steps=step, best_top1_error=best,
                       last_val=last_val, stopped_because=stopped or (state or {}).get("stopped_because", ""),
                       bad_files=bad_total)


def _forward_backward(strategy: ParallelStrategy, images, labels, amp_dtype, scaler, label_smoothing) -> torch.Tensor:
    """Forward and backward of one global-batch step in whatever parallel mode; the batch-mean loss.

    The strategy splits the batch into the accumulation micro-batches and weights each by its
    share, so the gradient does not depend on how the batch is split or over how many ranks.
    """
    scale = scaler.get_scale() if scaler.is_enabled() else 1.0
    return strategy.forward_backward(images, labels, amp_dtype=amp_dtype, label_smoothing=label_smoothing,
                                     loss_scale=scale)
