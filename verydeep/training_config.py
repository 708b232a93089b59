"""The training sections of a run configuration: optimiser, LR schedule and loop (``optim``,
``schedule``, ``train``; defaults: the paper's).

They live here, not in ``verydeep/train/`` beside the code that reads them, because the
training package takes the whole run configuration (``verydeep.config.Config``), which is
composed of these sections: inside ``train/`` they would make the packages ``config`` and
``train`` import each other. Like every section module, this one imports nothing from the
package (the CLI builds its parsers from it without torch).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("plateau", "step", "multistep", "cosine", "constant")
AMP_MODES = ("auto", "none", "bf16", "fp16")  # train.amp, --amp; resolved by verydeep.runtime.resolve_amp
NONFINITE_POLICIES = ("stop", "skip")  # train.nonfinite; acted on by verydeep.train.nonfinite
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")  # what verydeep.runtime.resolve_device takes


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.01
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam / adamw
    eps: float = 1e-8
    # Exempt biases and norm parameters from weight decay (a modern refinement; the paper decays all).
    no_decay_bias_norm: bool = False
    grad_clip: float | None = None  # max global grad norm; None: off
    # Fine-tuning (model.pretrained): the layers loaded from the file train at lr x this, the new
    # classifier at lr (the schedule scales both). 1: one LR for all.
    pretrained_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"name: unknown optimiser {self.name!r}; known: {', '.join(OPTIMIZERS)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.pretrained_lr_scale) and self.pretrained_lr_scale > 0):
            raise ValueError(f"pretrained_lr_scale must be a finite number > 0 (to keep layers fixed, set "
                             f"model.freeze_convs), got {self.pretrained_lr_scale}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must have two values, got {self.betas}")


@dataclass
class ScheduleConfig:
    name: str = "plateau"  # plateau | step | multistep | cosine | constant
    # plateau (the paper): divide by 1/factor when val top-1 error has not improved for
    # `patience` validations; after `max_decreases` decreases the next plateau stops the run.
    factor: float = 0.1
    patience: int = 1
    threshold: float = 0.0  # improvement (percentage points of top-1 error) that counts
    max_decreases: int = 3
    # step / multistep (epochs)
    step_size: int = 30
    milestones: list[int] = field(default_factory=lambda: [30, 60, 80])
    gamma: float = 0.1
    # cosine: per-step decay to min_lr after a linear warmup
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.01
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"name: unknown schedule {self.name!r}; known: {', '.join(SCHEDULES)}")
        if not 0 < self.factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {self.factor}")
        if self.patience < 0 or self.max_decreases < 0:
            raise ValueError("patience and max_decreases must be >= 0")


@dataclass
class TrainConfig:
    epochs: int = 74  # the paper: 370K iterations = 74 epochs of 1.28M images at batch 256
    max_iterations: int | None = 370_000  # optimiser steps; None: no cap
    batch_size: int = 256  # GLOBAL batch, split over processes and accumulation steps
    micro_batch_size: int | None = None  # per-process forward batch; None: batch_size / world
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | none | bf16 | fp16
    channels_last: bool | None = None  # None: the runtime policy's (verydeep.runtime: CUDA and CPU)
    compile: bool = False  # torch.compile the model
    cudnn_benchmark: bool = True
    val_every_steps: int | None = None  # extra validations inside an epoch
    checkpoint_every_steps: int | None = None  # extra last.pt writes inside an epoch
    val_batch_size: int | None = None  # None: same as the per-process batch
    log_every: int = 10  # steps between metrics.jsonl train records
    nonfinite: str = "stop"  # stop | skip: what a NaN/inf loss or gradient does
    # Under skip: the run fails (exit code 5, diverged) when more than this share of its steps
    # were skipped; judged at its end, and from 100 steps on at every log line.
    max_skipped_share: float = 0.1
    label_smoothing: float = 0.0
    # Model EMA (timm's and torchvision's): an exponential moving average of the weights and
    # batch-norm statistics, updated after every optimiser step, validated and checkpointed
    # (key ``ema``) alongside the weights; ``verydeep eval --ema`` evaluates it. None: off.
    # Typical: 0.999 to 0.9999 (the average spans about 1 / (1 - decay) steps).
    ema_decay: float | None = None
    tensorboard: bool = True
    plot: bool = True

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp: unknown mode {self.amp!r}; known: {', '.join(AMP_MODES)}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {self.nonfinite!r}")
        if not 0 <= self.max_skipped_share <= 1:
            raise ValueError(f"max_skipped_share must be in [0, 1], got {self.max_skipped_share}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1 (or null: no cap), got {self.max_iterations}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) (or null: no EMA), got {self.ema_decay}")
