"""The training loop (the paper's Sec. 3.1), readable top to bottom.

config -> :func:`~verydeep.train.setup.setup` (data, model, optimiser, ...) -> epochs of
:func:`~verydeep.train.step.train_step` -> validation, the plateau rule and checkpoints at
each epoch's end -> metrics and curves. Parallel modes wrap the same model; the loop does not
change with them.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch

from verydeep.config import Config
from verydeep.errors import Interrupted
from verydeep.parallel.distributed import all_reduce_sum, barrier
from verydeep.progress import progress_bar
from verydeep.train.metrics import TrainMeter
from verydeep.train.plot import plot_run
from verydeep.train.setup import Run, setup
from verydeep.train.state import TrainState
from verydeep.train.step import NonFiniteLossError, TooManySkippedSteps, train_step
from verydeep.train.validate import validate

log = logging.getLogger(__name__)

# Under train.nonfinite=skip, the share of skipped steps is judged at every log line only
# from this many steps on (a stray NaN among the first few steps is not yet a diverged run),
# and always when the run finishes.
MIN_STEPS_TO_JUDGE = 100


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
    skipped_steps: int = 0  # steps whose non-finite loss was skipped (train.nonfinite=skip)


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

    def agreed(self, distributed: bool, device: torch.device) -> bool:
        """Whether to stop after this step, the same answer on every rank: under torchrun the
        ranks see a signal at different steps (a rank still in the next step's all-reduce would
        wait forever for one that left), so they stop together after the step in which any of
        them saw it, each then holding the signal's name."""
        if not distributed:
            return self.raised is not None
        seen = torch.tensor([self.raised == "SIGTERM", self.raised == "SIGINT"], dtype=torch.float32, device=device)
        term, intr = all_reduce_sum(seen).tolist()
        if (term or intr) and not self.raised:
            self.raised = "SIGTERM" if term else "SIGINT"
        return self.raised is not None


def train(cfg: Config, out_dir: str | Path, *, resume: bool | str = False, overwrite: bool = False) -> TrainResult:
    """Train ``cfg`` into ``out_dir`` until the epochs, the iteration cap or the plateau rule end
    the run, or a signal interrupts it. ``resume`` (True: continue its ``last.pt``; "auto": when
    there is one) and ``overwrite`` say what to do with a run already there (``setup``).

    A run a signal stopped writes its checkpoint and summary, then raises Interrupted (exit
    code 128 + the signal): a scheduler must not take it for a finished run."""
    run, state = setup(cfg, Path(out_dir), resume=resume, overwrite=overwrite)
    try:
        with StopFlag() as stop:
            while run.more_to_train(state):
                bad_files = train_one_epoch(run, state, stop)
                if stop.raised:
                    run.save_checkpoint(state, "last.pt")  # a run to continue: written before the reason
                    state.stopped_because = f"interrupted by {stop.raised}"
                    if run.is_main:
                        log.warning("%s: checkpoint written at step %d; continue with --resume",
                                    state.stopped_because, state.step)
                    break
                end_of_epoch(run, state, bad_files)
    finally:
        run.metrics.close()
        run.release_folder()
    result = _finish(run, state)
    if not run.more_to_train(state):  # finished: answer for the skipped steps (an interrupted run does later)
        _judge_skipped_share(run, state, final=True)
    if stop.raised:
        raise Interrupted(stop.raised, f"{state.stopped_because} at step {state.step}: checkpoint "
                                       f"{run.run_dir / 'last.pt'} written; continue with --resume")
    return result


def train_one_epoch(run: Run, state: TrainState, stop: StopFlag) -> int:
    """Steps from ``state.batch_in_epoch`` to the epoch's end, the iteration cap or a signal;
    logs, validates and checkpoints on the way as configured. Returns the number of unreadable
    training images skipped in the epoch (over all ranks)."""
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
        loss = _step(run, state, images, labels)
        if run.ema is not None:  # after every optimiser step (a skipped step left the weights as they were)
            run.ema.update(run.strategy.local_module)
        meter.add(state.step, loss, images.shape[0] * run.strategy.data_world)
        state.step += 1
        state.batch_in_epoch += 1
        bad_files += len(bad)
        lr = run.optimizer.param_groups[0]["lr"]
        run.metrics.scalar("lr", lr, state.step)  # every step; the train records' lr is not mirrored again
        if state.step % cfg.log_every == 0 or state.batch_in_epoch == run.steps_per_epoch:
            _log_train(run, state, meter, lr, bar)
        bar.update(1)
        in_epoch = state.batch_in_epoch < run.steps_per_epoch  # the epoch's end validates anyway
        if cfg.val_every_steps and state.step % cfg.val_every_steps == 0 and in_epoch:
            _validate(run, state, "in-epoch")
        if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0:
            _account_skipped(run, state, meter.take_skipped())  # no checkpoint before its steps are judged
            run.save_checkpoint(state, "last.pt")
        if stop.agreed(run.dist.world_size > 1, run.runtime.device) or state.step >= run.max_steps:
            break
    bar.close()
    _account_skipped(run, state, meter.take_skipped())  # before the epoch's end (or a signal) checkpoints
    bad_files = int(all_reduce_sum(torch.tensor(bad_files, device=run.runtime.device)).item())
    state.bad_files += bad_files
    if bad_files and run.is_main:
        log.warning("epoch %d: %d unreadable training images skipped (replacements drawn)", state.epoch + 1,
                    bad_files)
    return bad_files


def _step(run: Run, state: TrainState, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    try:
        return train_step(run.strategy, run.optimizer, run.scaler, run.schedule, images, labels, step=state.step,
                          settings=run.step_settings)
    except NonFiniteLossError as e:  # decided on the host (see verydeep.train.step): at once
        raise _stopped(run, state, state.step, e.value) from None


def _stopped(run: Run, state: TrainState, step: int, value: float) -> NonFiniteLossError:
    """The one-line error of a run stopped by a non-finite loss at ``step`` (train.nonfinite=stop):
    where it stopped, and what is on disk (never a checkpoint that does not exist)."""
    batch = state.batch_in_epoch - (state.step - step)  # the step's batch in this epoch
    last = run.run_dir / "last.pt"
    saved = (f"{last} holds the last good state" if last.is_file()
             else f"no checkpoint was written before it (nothing in {run.run_dir} to resume from)")
    return NonFiniteLossError(
        f"loss is {value} at step {step} (epoch {state.epoch + 1}, batch {batch}); stopped without saving: "
        f"{saved} (set train.nonfinite=skip to skip such steps, or lower optim.lr)", value=value)


def _account_skipped(run: Run, state: TrainState, skipped: list[tuple[int, float]]) -> None:
    """Act on the steps whose loss came back non-finite (their updates were dropped): stop the
    run (train.nonfinite=stop); or count them in the state and metrics, and fail once too
    many were skipped (skip)."""
    if not skipped:
        return
    if run.step_settings.nonfinite != "skip":
        raise _stopped(run, state, *skipped[0])
    state.skipped_steps += len(skipped)
    for step, _ in skipped:
        run.metrics.write({"kind": "skipped", "epoch": state.epoch, "step": step})
    if run.is_main:
        log.warning("non-finite loss at step %s: update skipped (%d of %d steps skipped so far)",
                    ", ".join(f"{step} ({value})" for step, value in skipped), state.skipped_steps, state.step)
    _judge_skipped_share(run, state, final=False)


def _judge_skipped_share(run: Run, state: TrainState, *, final: bool) -> None:
    """Fail the run when more than ``train.max_skipped_share`` of its steps were skipped."""
    limit = run.cfg.train.max_skipped_share
    if state.skipped_steps <= limit * state.step or (not final and state.step < MIN_STEPS_TO_JUDGE):
        return
    raise TooManySkippedSteps(
        f"{state.skipped_steps} of {state.step} steps had a non-finite loss and were skipped, more than "
        f"train.max_skipped_share={limit:g}: the run is diverging (lower optim.lr, or raise the share); "
        f"{run.run_dir / 'last.pt'} holds its last state")


def _log_train(run: Run, state: TrainState, meter: TrainMeter, lr: float, bar) -> None:
    loss, images_per_s, skipped = meter.report()
    _account_skipped(run, state, skipped)
    # loss: the mean over the window's applied steps; None (null) when every one was skipped
    run.metrics.write({"kind": "train", "epoch": state.epoch, "step": state.step, "loss": loss, "lr": lr,
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
    run.metrics.write({"kind": "val", "epoch": state.epoch, "step": state.step, **result, **ema, "tag": tag})
    if run.is_main:
        unreadable = result["val_bad_images"]
        log.info("val epoch %d step %d: loss %.4f top-1 error %.2f%% top-5 error %.2f%%%s", state.epoch, state.step,
                 result["val_loss"], result["val_top1_error"], result["val_top5_error"],
                 f" ({unreadable} unreadable images counted as errors)" if unreadable else "")
        if ema:
            log.info("val epoch %d step %d, EMA of the weights: loss %.4f top-1 error %.2f%% top-5 error %.2f%%",
                     state.epoch, state.step, ema["ema_val_loss"], ema["ema_val_top1_error"],
                     ema["ema_val_top5_error"])
    state.last_val = result
    return result


def end_of_epoch(run: Run, state: TrainState, bad_files: int) -> None:
    """Validate; on a completed epoch apply the plateau rule (Sec. 3.1: LR / 10 when val error
    stops improving); decide whether the run stops; write last.pt, and best.pt on a new best."""
    epoch_done = state.batch_in_epoch >= run.steps_per_epoch
    top1 = _validate(run, state, "epoch")["val_top1_error"]
    run.metrics.write({"kind": "epoch", "epoch": state.epoch, "step": state.step, "bad_files": bad_files})
    improved = state.best_top1_error is None or top1 < state.best_top1_error
    if epoch_done:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    action = run.schedule.on_validation(top1) if epoch_done else "n/a"
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
    log.info("%s; best val top-1 error %s; %d steps skipped (non-finite loss); written: %s",
             state.stopped_because or "stopped", "n/a (no validation yet)" if best is None else f"{best:.2f}%",
             state.skipped_steps, ", ".join(str(p) for p in [*files, *([png] if png else [])]) or "nothing")
