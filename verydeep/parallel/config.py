"""Parallelism section of a run configuration. Data parallelism needs no key: it follows
from the number of processes torchrun starts (WORLD_SIZE)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ParallelConfig:
    backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    sync_batch_norm: bool = False  # batch-norm statistics over all data-parallel ranks
    pipeline_stages: int = 1  # >1: model parallel, the net split into this many stages
    microbatches: int = 4  # pipeline micro-batches per step
    pipeline_schedule: str = "1f1b"  # gpipe | 1f1b
    tensor_parallel_fc: bool = False  # hybrid: data-parallel convs, tensor-parallel FC layers

    def __post_init__(self) -> None:
        if self.pipeline_schedule not in ("gpipe", "1f1b"):
            raise ValueError(f"pipeline_schedule must be gpipe or 1f1b, got {self.pipeline_schedule!r}")
        if self.pipeline_stages < 1 or self.microbatches < 1:
            raise ValueError("pipeline_stages and microbatches must be >= 1")
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"backend must be auto, nccl or gloo, got {self.backend!r}")
