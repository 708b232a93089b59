"""The training loop (the paper's Sec. 3.1), readable top to bottom.

config -> :func:`~verydeep.train.setup.setup` (data, model, optimiser, ...) -> epochs of
:func:`~verydeep.train.step.train_step` -> validation, the plateau rule and checkpoints at
each epoch's end -> metrics and curves. Parallel modes wrap the same model; the loop does not
change with them.
"""

from __future__ import annotations

import logging
import math
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch

from verydeep.config import Config
from verydeep.data.layouts import Splits
from verydeep.errors import Interrupted
from verydeep.parallel.distributed import all_reduce_sum, barrier
from verydeep.progress import progress_bar
from verydeep.train.metrics import TrainMeter
from verydeep.train.plot import plot_run
from verydeep.train.setup import Run, setup
from verydeep.train.state import TrainState
from verydeep.train.nonfinite import Diverged
from verydeep.train.step import StepResult, train_step
from verydeep.train.validate import validate

log = logging.getLogger(__name__)


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
    skipped_steps: int = 0  # steps whose non-finite loss or gradient was skipped (train.nonfinite=skip)


class StopFlag:
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

    def agreed(self, distributed: bool) -> bool:
        """Whether to stop after this step, the same answer on every rank: under torchrun the
        ranks see a signal at different steps (a rank still in the next step's all-reduce would
        wait forever for one that left), so they stop together after the step in which any of
        them saw it, each then holding the signal's name."""
        if not distributed:
            return self.raised is not None
        # A CPU tensor: under NCCL it goes through the group's gloo side (parallel.distributed),
        # a host exchange that does not wait for the GPU, so a step keeps no host sync.
        seen = torch.tensor([self.raised == "SIGTERM", self.raised == "SIGINT"], dtype=torch.float32)
        term, intr = all_reduce_sum(seen).tolist()
        if (term or intr) and not self.raised:
            self.raised = "SIGTERM" if term else "SIGINT"
        return self.raised is not None


def train(cfg: Config, out_dir: str | Path, *, resume: bool | str = False, overwrite: bool = False,
          splits: Splits | None = None) -> TrainResult:
    """Train ``cfg`` into ``out_dir`` until the epochs, the iteration cap or the plateau rule end
    the run, or a signal interrupts it. ``resume`` (True: continue its ``last.pt``; "auto": when
    there is one) and ``overwrite`` say what to do with a run already there (``setup``);
    ``splits``: the dataset, found already (``verydeep.train.start_check``).

    A run a signal stopped writes its checkpoint and summary, then raises Interrupted (exit
    code 128 + the signal): a scheduler must not take it for a finished run."""
    run, state = setup(cfg, Path(out_dir), resume=resume, overwrite=overwrite, splits=splits)
    try:
        with StopFlag() as stop:
            while run.more_to_train(state):
                bad_files, figures = train_one_epoch(run, state, stop)
                if stop.raised:
                    run.save_checkpoint(state, "last.pt")  # a run to continue: written before the reason
                    state.stopped_because = f"interrupted by {stop.raised}"
                    if run.is_main:
                        log.warning("%s: checkpoint written at step %d; continue with --resume",
                                    state.stopped_because, state.step)
                    break
                end_of_epoch(run, state, bad_files, figures)
    finally:
        run.metrics.close()
        run.release_folder()
    result = _finish(run, state)
    if not run.more_to_train(state):  # finished: answer for the skipped steps (an interrupted run does later)
        run.nonfinite.judge_share(state, final=True)
    if stop.raised:
        raise Interrupted(stop.raised, f"{state.stopped_because} at step {state.step}: checkpoint "
                                       f"{run.run_dir / 'last.pt'} written; continue with --resume", step=state.step)
    return result


def train_one_epoch(run: Run, state: TrainState, stop: StopFlag) -> tuple[int, tuple[float | None, float, float]]:
    """Steps from ``state.batch_in_epoch`` to the epoch's end, the iteration cap or a signal;
    logs, validates and checkpoints on the way as configured. Returns the number of unreadable
    training images skipped in the epoch (over all ranks) and the epoch's figures (mean loss,
    images/s, seconds: ``TrainMeter.epoch_figures``).

    Epochs are numbered from 1 in everything a person reads (the bar, the log, metrics.jsonl,
    curves.png); ``state.epoch`` counts the epochs completed (0 while the first runs)."""
    cfg = run.cfg.train
    run.strategy.train()
    run.loader.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
    bar = progress_bar(total=run.steps_per_epoch, initial=state.batch_in_epoch, disable=not run.is_main,
                       desc=f"epoch {state.epoch + 1}/{cfg.epochs}", leave=False)
    meter = TrainMeter(run.runtime.device)
    bad_files = 0
    for images, labels, bad in run.loader:
        if state.batch_in_epoch >= run.steps_per_epoch:
            break
        loss, status = _step(run, state, images, labels)
        if run.ema is not None:  # after every optimiser step (a skipped step left the weights as they were)
            run.ema.update(run.strategy.local_module)
        meter.add(state.step, loss, images.shape[0] * run.strategy.data_world, status)
        state.step += 1
        state.batch_in_epoch += 1
        bad_files += len(bad)
        lr = run.schedule.lr(state.step - 1)  # the step's LR (a fine-tuning run's pretrained layers: x a scale)
        run.metrics.scalar("lr", lr, state.step)  # every step; the train records' lr is not mirrored again
        if state.step % cfg.log_every == 0 or state.batch_in_epoch == run.steps_per_epoch:
            _log_train(run, state, meter, lr, bar)
        bar.update(1)
        in_epoch = state.batch_in_epoch < run.steps_per_epoch  # the epoch's end validates anyway
        if cfg.val_every_steps and state.step % cfg.val_every_steps == 0 and in_epoch:
            _validate(run, state, "in-epoch")
        if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0:
            run.nonfinite.account(state, meter.take_skipped())  # no checkpoint before its steps are judged
            run.save_checkpoint(state, "last.pt")
        if stop.agreed(run.dist.world_size > 1) or state.step >= run.max_steps:
            break
    bar.close()
    run.nonfinite.account(state, meter.take_skipped())  # before the epoch's end (or a signal) checkpoints
    bad_files = int(all_reduce_sum(torch.tensor(bad_files, device=run.runtime.device)).item())
    state.bad_files += bad_files
    if bad_files and run.is_main:
        log.warning("epoch %d: %d unreadable training images skipped (replacements drawn)", state.epoch + 1,
                    bad_files)
    return bad_files, meter.epoch_figures()


def _step(run: Run, state: TrainState, images: torch.Tensor, labels: torch.Tensor) -> StepResult:
    try:
        return train_step(run.strategy, run.optimizer, run.scaler, run.schedule, images, labels, step=state.step,
                          settings=run.step_settings)
    except Diverged as e:  # decided on the host (see verydeep.train.step): at once
        raise run.nonfinite.stopped(state, e.event) from None


def _log_train(run: Run, state: TrainState, meter: TrainMeter, lr: float, bar) -> None:
    loss, images_per_s, skipped = meter.report()
    run.nonfinite.account(state, skipped)
    # loss: the mean over the window's applied steps; None (null) when every one was skipped
    run.metrics.write({"kind": "train", "epoch": state.epoch + 1, "step": state.step, "loss": loss, "lr": lr,
                       "images_per_s": round(images_per_s, 1), "skipped": len(skipped)})
    bar.set_postfix(loss="n/a" if loss is None else f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.0f}",
                    refresh=False)


def _validate(run: Run, state: TrainState, tag: str) -> dict:
    result = validate(run.strategy, run.cfg, run.splits, per_process_batch=run.val_batch_size, runtime=run.runtime)
    ema = {}
    if run.ema is not None:  # the moving average, on the same images: ema_val_loss, ema_val_top1_error, ...
        ema = validate(run.strategy, run.cfg, run.splits, per_process_batch=run.val_batch_size, runtime=run.runtime,
                       logits_fn=run.ema.logits)
        ema = {f"ema_{k}": v for k, v in ema.items() if k in ("val_loss", "val_top1_error", "val_top5_error")}
    run.metrics.write({"kind": "val", "epoch": state.epoch + 1, "step": state.step, **result, **ema, "tag": tag})
    if run.is_main:
        unreadable = result["val_bad_images"]
        if tag != "epoch":  # the epoch's own validation is in the epoch's line (end_of_epoch)
            log.info("val in epoch %d at step %d: loss %.4f top-1 error %.2f%% top-5 error %.2f%%", state.epoch + 1,
                     state.step, result["val_loss"], result["val_top1_error"], result["val_top5_error"])
        if unreadable:
            log.warning("val: %d unreadable images counted as errors", unreadable)
        if ema:
            log.info("val in epoch %d at step %d, EMA of the weights: loss %.4f top-1 error %.2f%% top-5 error %.2f%%",
                     state.epoch + 1, state.step, ema["ema_val_loss"], ema["ema_val_top1_error"],
                     ema["ema_val_top5_error"])
    state.last_val = result
    return result


def end_of_epoch(run: Run, state: TrainState, bad_files: int,
                 figures: tuple[float | None, float, float] = (None, 0.0, 0.0)) -> None:
    """Validate; log the epoch's line (``figures``: its mean loss, images/s and seconds); on a
    completed epoch apply the plateau rule (Sec. 3.1: LR / 10 when val error stops improving);
    decide whether the run stops; write last.pt, and best.pt on a new best."""
    epoch_done = state.batch_in_epoch >= run.steps_per_epoch
    val = _validate(run, state, "epoch")
    top1 = val["val_top1_error"]
    if run.is_main:
        log.info("%s", epoch_line(state.epoch + 1, run.cfg.train.epochs, state.step, figures, val))
    run.metrics.write({"kind": "epoch", "epoch": state.epoch + 1, "step": state.step, "bad_files": bad_files})
    # A validation with a NaN/inf loss or logits is never a best, nor an improvement for the plateau rule.
    finite = math.isfinite(val["val_loss"]) and not val["val_nonfinite_images"]
    if not finite and run.is_main:
        log.warning("val epoch %d step %d: loss %s, %d images with non-finite logits: not counted as a best",
                    state.epoch + 1, state.step, val["val_loss"], val["val_nonfinite_images"])
    improved = finite and (state.best_top1_error is None or top1 < state.best_top1_error)
    if epoch_done:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    action = run.schedule.on_validation(top1 if finite else math.inf) if epoch_done else "n/a"
    if action == "decrease" and run.is_main:
        log.info("val top-1 error stopped improving: LR divided by %g (decrease %d of %d)",
                 1 / run.cfg.schedule.factor, run.schedule.decreases, run.cfg.schedule.max_decreases)
    if action == "stop":
        state.plateau_stopped = True
        state.stopped_because = f"val top-1 error stopped improving after {run.schedule.decreases} LR decreases"
    elif state.epoch >= run.cfg.train.epochs:
        state.stopped_because = f"completed {state.epoch} epochs"
    elif state.step >= run.max_steps:
        state.stopped_because = (f"reached {state.step} iterations "
                                 f"(train.max_iterations={run.cfg.train.max_iterations})")
    if improved:
        state.best_top1_error = top1
        # best.pt before last.pt: once last.pt records the new best, a resumed run never counts
        # it as an improvement again, so a best.pt lost in between (a kill, a full disk) would
        # stay lost. Killed after best.pt, the resumed run redoes the epoch and writes it again.
        run.save_checkpoint(state, "best.pt")
    run.save_checkpoint(state, "last.pt")
    barrier()


def epoch_line(epoch: int, epochs: int, step: int, figures: tuple[float | None, float, float], val: dict) -> str:
    """The one line an epoch leaves: ``epoch 3/30 (step 120): train loss 1.234 | val loss 1.100, top-1
    error 45.00%, top-5 error 12.00% | 520 images/s, 25.3 s``."""
    loss, images_per_s, seconds = figures
    return (f"epoch {epoch}/{epochs} (step {step}): train loss {'n/a' if loss is None else f'{loss:.4f}'} | "
            f"val loss {val['val_loss']:.4f}, top-1 error {val['val_top1_error']:.2f}%, top-5 error "
            f"{val['val_top5_error']:.2f}% | {images_per_s:.0f} images/s, {seconds:.1f} s")


def _finish(run: Run, state: TrainState) -> TrainResult:
    if run.is_main:
        _log_summary(run, state)
    return TrainResult(run_dir=run.run_dir, is_main=run.is_main, epochs_done=state.epoch, steps=state.step,
                       best_top1_error=state.best_top1_error, last_val=state.last_val,
                       stopped_because=state.stopped_because, bad_files=state.bad_files,
                       skipped_steps=state.skipped_steps)


def _log_summary(run: Run, state: TrainState) -> None:
    """The run's last line: why it stopped, its best error, and the files it has: only those
    that exist (a run interrupted before its first validation has no best.pt)."""
    png = plot_run(run.run_dir) if run.cfg.train.plot and (run.run_dir / "metrics.jsonl").is_file() else None
    files = [run.run_dir / name for name in ("best.pt", "last.pt", "metrics.jsonl") if (run.run_dir / name).is_file()]
    best = state.best_top1_error
    log.info("%s; best val top-1 error %s; %d steps skipped (non-finite loss or gradient); written: %s",
             state.stopped_because or "stopped", f"{best:.2f}%" if best is not None else
             "n/a (no validation with finite results)" if state.last_val else "n/a (no validation yet)",
             state.skipped_steps, ", ".join(str(p) for p in [*files, *([png] if png else [])]) or "nothing")
