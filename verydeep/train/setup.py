"""Everything a training run builds once before its first step, and the state it starts from.

:func:`setup` joins the process group, claims the run folder (its lock, the start mode:
``verydeep.train.run_folder``), fixes the runtime policy (device, AMP, memory format), finds
the data, builds the model and spreads it with its parallel strategy, then the optimiser, LR
schedule, loss scaler, metrics log and training loader; under ``--resume`` it
restores all of them from ``last.pt``, once it is known to fit this run's config and classes
(``verydeep.train.resume_check``). The loop (``verydeep.train.loop``) only uses them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from verydeep.config import Config, ConfigError, save_config
from verydeep.data import Splits, build_train_loader
from verydeep.data.loaders import TrainLoader
from verydeep.data.stats import resolve_stats
from verydeep.checkpoint import load
from verydeep.errors import CheckpointError
from verydeep.train.starting_net import starting_net
from verydeep.models.vgg import VGGSpec
from verydeep.parallel.distributed import DistInfo, barrier, init_distributed
from verydeep.parallel.strategy import ParallelStrategy, build_strategy
from verydeep.runtime import Runtime, build_runtime, configure_backends
from verydeep.train.checkpoint import (
    TrainingCheckpoint,
    load_training_checkpoint,
    save_training_checkpoint,
)
from verydeep.train.input_convention import check_start_weights, pretrained_convention
from verydeep.train.ema import ModelEMA
from verydeep.train.loss import classification_loss
from verydeep.train.metrics import MetricsLog
from verydeep.train.nonfinite import NonFiniteAccounting, check_finite_weights
from verydeep.train.optim import build_optimizer, freeze_convolutions
from verydeep.train.resume_check import check_resumable, schedule_change
from verydeep.train.run_folder import RunFolder, claim_run_folder, trim_metrics
from verydeep.train.schedules import LRSchedule
from verydeep.train.start_check import check_start
from verydeep.train.state import TrainState
from verydeep.train.step import StepSettings

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What :func:`setup` built: fixed for the run, used by every step and epoch."""

    cfg: Config
    run_dir: Path
    dist: DistInfo
    runtime: Runtime
    splits: Splits
    spec: VGGSpec
    strategy: ParallelStrategy
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    step_settings: StepSettings
    metrics: MetricsLog
    nonfinite: NonFiniteAccounting  # what a dropped update or diverged weights do to the run
    loader: TrainLoader
    steps_per_epoch: int  # global batches in an epoch
    max_steps: float  # the epochs' steps, capped by train.max_iterations
    val_batch_size: int  # per process
    folder: RunFolder | None = None  # the claimed run folder (its lock): released when the run ends
    ema: ModelEMA | None = None  # the weights' moving average (train.ema_decay)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def more_to_train(self, state: TrainState) -> bool:
        return (state.epoch < self.cfg.train.epochs and state.step < self.max_steps
                and not state.plateau_stopped)

    def save_checkpoint(self, state: TrainState, name: str) -> None:
        """Write RUN_DIR/``name``; collective: every rank calls it (the weights are gathered from all).

        Weights (or their moving average) with a NaN or inf are refused before anything is
        written: the files already there keep the last good state (NonFiniteWeights, exit 5)."""
        weights = self.strategy.full_state_dict()
        if not self.is_main:
            return
        ema = self.ema.state_dict() if self.ema else None
        where = f"{self.run_dir / name} not written, the files there keep the last good state"
        check_finite_weights(weights, f"the weights at step {state.step} ({where})")
        if ema is not None:
            check_finite_weights(ema, f"the weights' moving average at step {state.step} ({where})")
        save_training_checkpoint(self.run_dir / name, state, weights=weights, spec=self.spec, cfg=self.cfg,
                                 classes=self.splits.classes, class_names=self.splits.class_names,
                                 optimizer=self.optimizer, schedule=self.schedule, scaler=self.scaler,
                                 world_size=self.dist.world_size, parallel_mode=self.strategy.mode,
                                 metrics_bytes=_size(self.metrics.path),
                                 ema=ema,
                                 ema_updates=self.ema.updates if self.ema else 0)

    def release_folder(self) -> None:
        if self.folder is not None:
            self.folder.release()


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


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


def _batches(cfg: Config, world_size: int, train_images: int) -> tuple[int, int, int]:
    """(per-process batch, accumulation steps, steps per epoch) of this run."""
    if world_size % cfg.parallel.pipeline_stages:
        raise ValueError(f"parallel.pipeline_stages={cfg.parallel.pipeline_stages} does not divide the "
                         f"{world_size} processes")
    data_world = world_size // cfg.parallel.pipeline_stages  # data-parallel replicas
    per_process, accum = batch_plan(cfg.train.batch_size, data_world, cfg.train.micro_batch_size)
    steps_per_epoch = train_images // cfg.train.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training set ({train_images} images)"
        )
    return per_process, accum, steps_per_epoch


def _checkpoint_to_resume(folder: RunFolder, cfg: Config, splits: Splits, is_main: bool) -> TrainingCheckpoint | None:
    """``last.pt`` when the run resumes, checked against today's config and data; metrics.jsonl
    cut back to where the checkpoint was written."""
    if not folder.resume:
        return None
    path = folder.path / "last.pt"
    ckpt = load_training_checkpoint(path)
    check_resumable(path, ckpt.config, ckpt.classes, cfg, splits.classes)
    if is_main:
        trim_metrics(folder.path / "metrics.jsonl", ckpt.metrics_bytes)
        if ckpt.state.best_top1_error is not None and not (folder.path / "best.pt").is_file():
            log.warning("%s records a best val top-1 error of %.2f%% but best.pt is missing (written by an older "
                        "version that could lose it); it is written again at the next improvement", path,
                        ckpt.state.best_top1_error)
    return ckpt


def _resumed_state(ckpt: TrainingCheckpoint, run: Run) -> TrainState:
    state = ckpt.restore(optimizer=run.optimizer, schedule=run.schedule, scaler=run.scaler,
                         parallel_mode=run.strategy.mode)
    log.info("resumed from %s at epoch %d, step %d (batch %d of the epoch)", run.run_dir / "last.pt", state.epoch,
             state.step, state.batch_in_epoch)
    if state.plateau_stopped:
        log.info("the run had already finished (%s)", state.stopped_because)
    if run.more_to_train(state):
        state.stopped_because = ""  # a finished run resumed with a longer recipe trains on
    return state


def _log_plan(run: Run, accum: int, per_process: int) -> None:
    cfg, splits = run.cfg, run.splits
    log.info("parallelism: %s", run.strategy.describe())
    scaled = [g for g in run.optimizer.param_groups if "lr_scale" in g]
    if scaled:
        log.info("optim.pretrained_lr_scale=%g: %d pretrained tensors train at lr x %g, the %d new ones at lr",
                 cfg.optim.pretrained_lr_scale, sum(len(g["params"]) for g in scaled), cfg.optim.pretrained_lr_scale,
                 sum(len(g["params"]) for g in run.optimizer.param_groups if "lr_scale" not in g))
    log.info("run %s: %d train / %d val images, %d classes (val layout: %s); %d steps/epoch, "
             "global batch %d = %d process(es) x %d accumulation x %d", run.run_dir, len(splits.train),
             len(splits.val), len(splits.classes), splits.val_layout, run.steps_per_epoch, cfg.train.batch_size,
             run.dist.world_size, accum, per_process // accum)
    if splits.holdout:
        log.info("model selection (best.pt, the plateau rule) on %d held-out training images (data.holdout=%s, "
                 "seed %d), not on the validation set", len(splits.holdout), cfg.data.holdout, cfg.data.holdout_seed)


def _with_dataset_stats(cfg: Config, splits: Splits, is_main: bool) -> Config:
    """``cfg`` with its mean RGB / colour PCA as values (``data.stats_file``, e.g. ``train``: the
    training set's own), so the saved config and every checkpoint carry the input convention's
    numbers. Rank 0 computes and caches them first; the other ranks then read the cache."""
    if not cfg.data.stats_file:
        return cfg
    paths = [p for p, _ in splits.train]
    data = resolve_stats(cfg.data, paths) if is_main else None
    barrier()
    return dataclasses.replace(cfg, data=data or resolve_stats(cfg.data, paths, progress=False))


def setup(cfg: Config, run_dir: Path, *, resume: bool | str = False,
          overwrite: bool = False, splits: Splits | None = None) -> tuple[Run, TrainState]:
    """The run's parts and the state to start from: fresh, or ``run_dir/last.pt``'s.

    ``resume``: True continues ``last.pt`` (there must be one), "auto" continues it when there
    is one; ``overwrite``: a new run replaces the run already in ``run_dir``. The folder is
    locked until :meth:`Run.release_folder` (``verydeep.train.run_folder``). The net's name
    and the data are checked before the folder is claimed (``splits``: found already, by
    ``verydeep.train.start_check``); a start that fails leaves no folder it made."""
    splits = check_start(cfg) if splits is None else splits
    dist = init_distributed(cfg.train.device, cfg.parallel.backend)
    folder = claim_run_folder(run_dir, dist, resume=resume, overwrite=overwrite)
    try:
        return _build(cfg, folder, dist, splits)
    except BaseException:
        folder.release(failed=True)
        raise


def _load_resumed_weights(model: torch.nn.Module, ckpt: TrainingCheckpoint, path: Path) -> None:
    try:
        model.load_state_dict(ckpt.weights)
    except RuntimeError as e:  # a config check passed, yet the tensors do not fit (a hand-edited file)
        raise CheckpointError(f"{path}: its weights do not fit the net of this run: {str(e).splitlines()[0]}") \
            from None


def _model_ema(cfg: Config, model: torch.nn.Module, ckpt: TrainingCheckpoint | None,
               device: torch.device) -> ModelEMA | None:
    """The weights' moving average (``train.ema_decay``), restored from the checkpoint on resume."""
    if cfg.train.ema_decay is None:
        return None
    if cfg.parallel.pipeline_stages > 1 or cfg.parallel.tensor_parallel_fc:
        raise ConfigError("train.ema_decay needs the data-parallel mode (one process or DDP): pipeline and "
                          "hybrid ranks each hold only part of the net")
    ema = ModelEMA(model, cfg.train.ema_decay, device)
    if ckpt is not None and ckpt.ema is not None:
        ema.load_state_dict(ckpt.ema, ckpt.ema_updates)
    elif ckpt is not None:
        log.info("train.ema_decay: the checkpoint has no average yet; it starts from the resumed weights")
    return ema


def _build(cfg: Config, folder: RunFolder, dist: DistInfo, splits: Splits) -> tuple[Run, TrainState]:
    run_dir = folder.path
    torch.manual_seed(cfg.train.seed + dist.rank)
    runtime = build_runtime(dist.device, cfg.train.amp, cfg.train.channels_last, dist.local_rank)
    configure_backends(runtime.device, cfg.train.cudnn_benchmark, tf32=runtime.tf32)
    if dist.is_main:
        log.info("precision: %s (train.amp=%s)", runtime.precision(), cfg.train.amp)
    cfg = _with_dataset_stats(cfg, splits, dist.is_main)
    pretrained = load(cfg.model.pretrained) if cfg.model.pretrained else None
    if pretrained is not None:  # fine-tuning: the run's input is the one the file's net was trained on
        cfg = pretrained_convention(cfg, pretrained, warn=dist.is_main)
    check_start_weights(cfg, warn=dist.is_main)  # init_from / weights trained on the same kind of input
    per_process, accum, steps_per_epoch = _batches(cfg, dist.world_size, len(splits.train))

    ckpt = _checkpoint_to_resume(folder, cfg, splits, dist.is_main)
    change = ckpt and schedule_change(ckpt.config, cfg, ckpt.state.step, steps_per_epoch)
    if change and dist.is_main:
        log.warning("%s", change)
    start = starting_net(cfg.model, len(splits.classes), cfg.data.crop_size, classes=splits.classes,
                         pretrained=pretrained)
    model = start.model
    if cfg.model.freeze_convs:
        log.info("model.freeze_convs: %d conv-layer tensors frozen; the FC layers train", freeze_convolutions(model))
    if ckpt is not None:
        _load_resumed_weights(model, ckpt, run_dir / "last.pt")
    if runtime.channels_last:  # the memory format only: the strategy places each rank's part on its device
        model.to(memory_format=torch.channels_last)
    ema = _model_ema(cfg, model, ckpt, runtime.device)  # a copy of the net: before compile wraps its forward
    if cfg.train.compile:
        model.compile()  # compiles forward in place; state-dict keys stay unchanged
    strategy = build_strategy(model, cfg.parallel, dist, crop_size=cfg.data.crop_size, accum=accum)
    metrics = MetricsLog(run_dir, enabled=dist.is_main, tensorboard=cfg.train.tensorboard)
    run = Run(
        cfg=cfg, run_dir=run_dir, dist=dist, runtime=runtime, splits=splits, spec=model.spec, strategy=strategy,
        optimizer=build_optimizer(strategy.local_module, cfg.optim, runtime.device, start.pretrained),
        scaler=torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype is torch.float16),
        schedule=LRSchedule(cfg.schedule, cfg.optim.lr, steps_per_epoch, cfg.train.epochs, cfg.train.max_iterations),
        step_settings=StepSettings(seed=cfg.train.seed, amp_dtype=runtime.amp_dtype,
                                   loss_fn=classification_loss(cfg.train.label_smoothing),
                                   grad_clip=cfg.optim.grad_clip, nonfinite=cfg.train.nonfinite),
        metrics=metrics,
        nonfinite=NonFiniteAccounting(cfg.train.nonfinite, cfg.train.max_skipped_share, run_dir, metrics,
                                      dist.is_main),
        loader=build_train_loader(cfg.data, splits.train, per_process, seed=cfg.train.seed,
                                  rank=strategy.data_rank, world_size=strategy.data_world,
                                  device=runtime.device, channels_last=runtime.channels_last,
                                  num_classes=len(splits.classes),
                                  dtype=runtime.batch_dtype(whole_model=not cfg.parallel.pipeline_stages > 1
                                                            and not cfg.parallel.tensor_parallel_fc)),
        steps_per_epoch=steps_per_epoch,
        max_steps=min(cfg.train.epochs * steps_per_epoch, cfg.train.max_iterations or math.inf),
        val_batch_size=cfg.train.val_batch_size or per_process, folder=folder, ema=ema,
    )
    state = TrainState() if ckpt is None else _resumed_state(ckpt, run)
    if dist.is_main:
        save_config(cfg, run_dir / "config.yaml")
        _log_plan(run, accum, per_process)
    return run, state
