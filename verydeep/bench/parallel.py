"""Training throughput of each parallel mode on this machine's CPUs (gloo), 1 vs N processes.

    verydeep bench parallel [--model A --width 0.25 --crop-size 64 --batch-size 32 --steps 8]

Each mode runs ``steps`` timed SGD steps (after 2 warm-up steps) of the same global batch
through :func:`verydeep.parallel.strategy.build_strategy`, on synthetic tensors. Each process
plays one device: ``--threads`` intra-op threads per process (default 1), so N processes use
N times the compute of 1 (as N GPUs would). On a shared or busy machine keep 1: several
threads per process spin-wait on contended cores. Prints a Markdown table (images/s of the
global batch).

``--device cuda`` runs the same modes on the GPUs this process sees, one per rank (rank r on
GPU r mod count: on a single GPU all ranks share it, with gloo, since NCCL refuses two ranks
on one device), to check that each mode's CUDA path runs; a mode that fails or hangs is
reported in its row and the others still run.
"""

from __future__ import annotations

import os
import queue
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
    device: str = "cpu"  # cpu | cuda
    backend: str = "gloo"  # gloo | nccl | auto
    amp: str = "none"  # none | bf16 | fp16 | auto


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, threads: int, mode: dict, cfg: ParallelBenchConfig, out) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    from verydeep.bench.common import synchronize
    from verydeep.models import create_model
    from verydeep.parallel.config import ParallelConfig
    from verydeep.parallel.distributed import init_distributed, shutdown
    from verydeep.parallel.strategy import build_strategy
    from verydeep.runtime import resolve_amp
    from verydeep.train.loss import classification_loss

    try:
        info = init_distributed(cfg.device, cfg.backend)
        amp = resolve_amp(cfg.amp, info.device)
        torch.manual_seed(0)
        model = create_model(cfg.model, num_classes=100, width=cfg.width, head_size=max(1, cfg.crop // 32),
                             dropout=0.5)
        strat = build_strategy(model, ParallelConfig(**mode), info, crop_size=cfg.crop)
        opt = torch.optim.SGD(strat.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        per = cfg.batch // strat.data_world
        g = torch.Generator().manual_seed(strat.data_rank)
        x = torch.randn(per, 3, cfg.crop, cfg.crop, generator=g).to(info.device)
        y = torch.randint(0, 100, (per,), generator=g).to(info.device)
        loss_fn = classification_loss()
        for i in range(cfg.steps + 2):
            if i == 2:
                synchronize(info.device)
                if world > 1:
                    torch.distributed.barrier()
                t0 = time.perf_counter()
            strat.forward_backward(x, y, loss_fn, amp_dtype=amp)
            opt.step()
            opt.zero_grad(set_to_none=True)
        synchronize(info.device)
        if world > 1:
            torch.distributed.barrier()
        dt = time.perf_counter() - t0
        out.put((rank, cfg.batch * cfg.steps / dt, None))
        shutdown()
    except Exception as e:  # noqa: BLE001
        out.put((rank, None, repr(e)))


def run_mode(world: int, mode: dict, cfg: ParallelBenchConfig) -> float:
    # fork on a CPU: the ranks start in milliseconds instead of importing torch again (seconds
    # each, tens on a loaded machine: what made the section time out); spawn where CUDA is used
    ctx = mp.get_context("fork" if cfg.device == "cpu" and "fork" in mp.get_all_start_methods() else "spawn")
    q = ctx.Queue()
    threads = cfg.threads
    port = _port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, threads, mode, cfg, q)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        results = [q.get(timeout=cfg.timeout) for _ in range(world)]
    except queue.Empty:
        raise RuntimeError(f"{mode} on {world} processes: no result within {cfg.timeout:g} s") from None
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():  # a hung rank: ours to end
                p.kill()
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


def run_parallel_bench(cfg: ParallelBenchConfig, echo=print, progress=None) -> list[dict]:
    """Images/s of the global batch in every mode; ``echo`` gets the Markdown table line by line,
    ``progress`` (if given) the rows so far after each mode."""
    echo(f"net {cfg.model} width {cfg.width}, {cfg.crop}x{cfg.crop}, global batch {cfg.batch}, "
         f"{cfg.steps} timed steps, {cfg.threads} thread(s) per process, device {cfg.device} ({cfg.backend}), "
         f"amp {cfg.amp}; {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}; "
         f"{time.strftime('%Y-%m-%d')}")
    echo("| mode | processes | images/s |\n|---|---|---|")
    rows = []
    for name, world, mode in parallel_modes(cfg):
        try:
            ips, error = run_mode(world, mode, cfg), None
        except RuntimeError as e:  # one mode failing must not hide the others' figures
            ips, error = None, str(e).splitlines()[0]
        rows.append({"mode": name, "processes": world, "images_per_s": ips, "error": error})
        echo(f"| {name} | {world} | {'FAILED: ' + error if error else f'{ips:.1f}'} |")
        if progress is not None:
            progress(list(rows))
    return rows
