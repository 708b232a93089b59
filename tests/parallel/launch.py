"""Run a function on N real processes (gloo, CPU) and fail fast with the failing rank's traceback.

``run_ranks(fn, world, *args)`` spawns ``world`` processes with torchrun's environment
variables, joins the process group through ``verydeep.parallel.distributed.init_distributed``
and calls ``fn(dist_info, *args)`` on each. Results (picklable) come back in rank order. A
rank that raises reports its traceback at once and the others are killed (they would be
waiting in a collective); a deadline bounds the whole run.
"""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args, results) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    try:
        import torch

        torch.set_num_threads(1)
        from verydeep.parallel.distributed import init_distributed, shutdown

        info = init_distributed("cpu", "gloo", timeout_s=120)
        out = fn(info, *args)
        results.put((rank, "ok", out))
        shutdown()
    except BaseException:  # noqa: BLE001 - everything goes back to the test
        results.put((rank, "error", traceback.format_exc()))


class RankError(AssertionError):
    pass


def run_ranks(fn, world: int, *args, timeout: float = 90.0) -> list:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, results), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    out: dict[int, object] = {}
    errors: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(out) + len(errors) < world:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                rank, status, value = results.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in errors and r not in out]
                for r in dead:
                    errors[r] = f"process exited with code {procs[r].exitcode} without reporting"
                if errors:
                    break
                continue
            if status == "ok":
                out[rank] = value
            else:
                errors[rank] = value
                break  # the peers are likely stuck in a collective: stop now
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join(timeout=10)
    if errors:
        first = min(errors)
        raise RankError(f"rank {first} of {world} failed:\n{errors[first]}"
                        + "".join(f"\n(rank {r} also failed)" for r in errors if r != first))
    if len(out) < world:
        missing = sorted(set(range(world)) - set(out))
        raise RankError(f"timed out after {timeout:.0f}s: ranks {missing} of {world} did not finish")
    return [out[r] for r in range(world)]
