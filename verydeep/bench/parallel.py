"""Training throughput of each parallel mode on this machine's CPUs (gloo), 1 vs N processes.

    verydeep bench parallel [--model A --width 0.25 --crop 64 --batch-size 32 --steps 8]

Each mode runs ``steps`` timed SGD steps (after 2 warm-up steps) of the same global batch
through :func:`verydeep.parallel.strategy.build_strategy`, on synthetic tensors. Each process
plays one device: ``--threads`` intra-op threads per process (default 1), so N processes use
N times the compute of 1 (as N GPUs would). On a shared or busy machine keep 1: several
threads per process spin-wait on contended cores. Prints a Markdown table (images/s of the
global batch).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp

from verydeep.bench.common import cpu_model


@dataclass(frozen=True)
class ParallelBenchConfig:
    model: str = "A"
    width: float = 0.25
    crop: int = 64
    batch: int = 32  # global batch
    steps: int = 8
    world: int = 2
    microbatches: int = 4
    threads: int = 1  # intra-op threads per process
    timeout: float = 600


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, threads: int, mode: dict, cfg: ParallelBenchConfig, out) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    from verydeep.models import create_model
    from verydeep.parallel.config import ParallelConfig
    from verydeep.parallel.distributed import init_distributed, shutdown
    from verydeep.parallel.strategy import build_strategy

    try:
        info = init_distributed("cpu", "gloo")
        torch.manual_seed(0)
        model = create_model(cfg.model, num_classes=100, width=cfg.width, head_size=max(1, cfg.crop // 32),
                             dropout=0.5)
        strat = build_strategy(model, ParallelConfig(**mode), info, crop_size=cfg.crop)
        opt = torch.optim.SGD(strat.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        per = cfg.batch // strat.data_world
        g = torch.Generator().manual_seed(strat.data_rank)
        x = torch.randn(per, 3, cfg.crop, cfg.crop, generator=g)
        y = torch.randint(0, 100, (per,), generator=g)
        for i in range(cfg.steps + 2):
            if i == 2:
                if world > 1:
                    torch.distributed.barrier()
                t0 = time.perf_counter()
            strat.forward_backward(x, y)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if world > 1:
            torch.distributed.barrier()
        dt = time.perf_counter() - t0
        out.put((rank, cfg.batch * cfg.steps / dt, None))
        shutdown()
    except Exception as e:  # noqa: BLE001
        out.put((rank, None, repr(e)))


def run_mode(world: int, mode: dict, cfg: ParallelBenchConfig) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    threads = cfg.threads
    port = _port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, threads, mode, cfg, q)) for r in range(world)]
    for p in procs:
        p.start()
    results = [q.get(timeout=cfg.timeout) for _ in range(world)]
    for p in procs:
        p.join(timeout=30)
    errors = [e for _, _, e in results if e]
    if errors:
        raise RuntimeError(f"{mode} on {world} processes failed: {errors[0]}")
    return min(r for _, r, _ in results)


def parallel_modes(cfg: ParallelBenchConfig) -> list[tuple[str, int, dict]]:
    """(label, processes, ``ParallelConfig`` fields) of every mode, the 1-process baseline first."""
    n, mb = cfg.world, cfg.microbatches
    return [
        ("1 process", 1, {}),
        (f"DDP, {n} processes", n, {}),
        (f"pipeline {n} stages, {mb} micro-batches, GPipe", n,
         {"pipeline_stages": n, "microbatches": mb, "pipeline_schedule": "gpipe"}),
        (f"pipeline {n} stages, {mb} micro-batches, 1F1B", n,
         {"pipeline_stages": n, "microbatches": mb, "pipeline_schedule": "1f1b"}),
        (f"hybrid DP-conv/TP-FC, {n} processes", n, {"tensor_parallel_fc": True}),
    ]


def run_parallel_bench(cfg: ParallelBenchConfig, echo=print) -> list[dict]:
    """Images/s of the global batch in every mode; ``echo`` gets the Markdown table line by line."""
    echo(f"net {cfg.model} width {cfg.width}, {cfg.crop}x{cfg.crop}, global batch {cfg.batch}, "
         f"{cfg.steps} timed steps, {cfg.threads} thread(s) per process; {cpu_model()}, {os.cpu_count()} cores; "
         f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    echo("| mode | processes | images/s |\n|---|---|---|")
    rows = []
    for name, world, mode in parallel_modes(cfg):
        ips = run_mode(world, mode, cfg)
        rows.append({"mode": name, "processes": world, "images_per_s": ips})
        echo(f"| {name} | {world} | {ips:.1f} |")
    return rows
