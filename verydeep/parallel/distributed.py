"""Process-group set-up from torchrun's environment, and the few collectives we use.

torchrun (or SLURM's srun with the same variables) sets RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT; a plain ``python`` run is a world of one and needs no group.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from verydeep.runtime import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def backend_spec(backend: str, device_type: str) -> str:
    """The process group's backend for ``parallel.backend`` on a ``device_type``: gloo on CPU;
    with NCCL, CPU tensors go through gloo (``cpu:gloo,cuda:nccl``), so the host-side collectives
    (the evaluation's coverage counts and per-image results, the agreed stop after a signal)
    work under NCCL and never wait on the GPU's stream."""
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    return "cpu:gloo,cuda:nccl" if backend == "nccl" else backend


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: float = 1800) -> DistInfo:
    """Join the process group torchrun describes (idempotent); a world of one otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = backend_spec(backend, dev.type)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev)


def current() -> DistInfo:
    """Rank and world of the already-initialised group (a world of one if none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
