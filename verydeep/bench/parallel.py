"""Training throughput of each parallel mode on this machine's CPUs (gloo), 1 vs N processes.

    python -m verydeep.bench.parallel [--model A --width 0.25 --crop 64 --batch 32 --steps 8]

Each mode runs ``steps`` timed SGD steps (after 2 warm-up steps) of the same global batch
through :func:`verydeep.parallel.strategy.build_strategy`, on synthetic tensors. Each process
plays one device: ``--threads`` intra-op threads per process (default 1), so N processes use
N times the compute of 1 (as N GPUs would). On a shared or busy machine keep 1: several
threads per process spin-wait on contended cores. Prints a Markdown table (images/s of the
global batch).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import time

import torch
import torch.multiprocessing as mp


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, threads: int, mode: dict, args, out) -> None:
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
        model = create_model(args.model, num_classes=100, width=args.width, head_size=max(1, args.crop // 32),
                             dropout=0.5)
        strat = build_strategy(model, ParallelConfig(**mode), info, crop_size=args.crop)
        opt = torch.optim.SGD(strat.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        per = args.batch // strat.data_world
        g = torch.Generator().manual_seed(strat.data_rank)
        x = torch.randn(per, 3, args.crop, args.crop, generator=g)
        y = torch.randint(0, 100, (per,), generator=g)
        for i in range(args.steps + 2):
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
        out.put((rank, args.batch * args.steps / dt, None))
        shutdown()
    except Exception as e:  # noqa: BLE001
        out.put((rank, None, repr(e)))


def run_mode(world: int, mode: dict, args) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    threads = args.threads
    port = _port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, threads, mode, args, q)) for r in range(world)]
    for p in procs:
        p.start()
    results = [q.get(timeout=args.timeout) for _ in range(world)]
    for p in procs:
        p.join(timeout=30)
    errors = [e for _, _, e in results if e]
    if errors:
        raise RuntimeError(f"{mode} on {world} processes failed: {errors[0]}")
    return min(r for _, r, _ in results)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="A")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args(argv)
    n = args.world
    modes = [
        ("1 process", 1, {}),
        (f"DDP, {n} processes", n, {}),
        (f"pipeline {n} stages, {args.microbatches} micro-batches, GPipe", n,
         {"pipeline_stages": n, "microbatches": args.microbatches, "pipeline_schedule": "gpipe"}),
        (f"pipeline {n} stages, {args.microbatches} micro-batches, 1F1B", n,
         {"pipeline_stages": n, "microbatches": args.microbatches, "pipeline_schedule": "1f1b"}),
        (f"hybrid DP-conv/TP-FC, {n} processes", n, {"tensor_parallel_fc": True}),
    ]
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    print(f"net {args.model} width {args.width}, {args.crop}x{args.crop}, global batch {args.batch}, "
          f"{args.steps} timed steps, {args.threads} thread(s) per process; {cpu}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"{time.strftime('%Y-%m-%d')}")
    print("| mode | processes | images/s |\n|---|---|---|")
    for name, world, mode in modes:
        print(f"| {name} | {world} | {run_mode(world, mode, args):.1f} |", flush=True)


if __name__ == "__main__":
    main()
