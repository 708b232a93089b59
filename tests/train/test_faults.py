"""Fault injection: a tiny training SIGKILLed at many points, resumed each time, must end as an
uninterrupted run ends: ``last.pt`` bitwise equal, ``best.pt`` present and matching the best
recorded error, ``metrics.jsonl`` holding each record once, no temporary files left.

The kill points are counted in the process itself (a forked child with its functions wrapped):
after every optimiser step, and around every checkpoint write (before it starts, with the
temporary file written but not renamed, renamed but before the next write), which includes the
point between ``best.pt`` and ``last.pt`` at an epoch's end.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal
import sys
import traceback

import pytest
import torch

from verydeep.checkpoint import load as load_checkpoint
from verydeep.config import load_config
from verydeep.train import loop
from verydeep.train.loop import train

from .conftest import TINY_OVERRIDES

FORK = multiprocessing.get_context("fork")
# 24 images / batch 6 = 4 steps per epoch, 2 epochs; last.pt also every 3 steps (mid-epoch).
EXTRA = ["train.plot=false", "train.checkpoint_every_steps=3", "model.dropout=0.5"]
VOLATILE = ("time", "images_per_s")  # wall-clock figures: differ between any two runs


def _cfg(root, cache):
    return load_config(None, [*TINY_OVERRIDES, f"data.root={root}", f"data.index_cache={cache}", *EXTRA])


def _arm(kill_at: int | None) -> None:
    """In the child: SIGKILL this process at kill point number ``kill_at``."""
    counter = itertools.count()

    def point():
        if next(counter) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def around(fn, before: bool, after: bool):
        def wrapped(*args, **kwargs):
            if before:
                point()
            result = fn(*args, **kwargs)
            if after:
                point()
            return result
        return wrapped

    loop.train_step = around(loop.train_step, before=False, after=True)
    torch.save = around(torch.save, before=True, after=True)  # nothing written / temporary file written
    os.replace = around(os.replace, before=True, after=True)  # complete but not renamed / renamed


def _child(cfg, out, kill_at):
    try:
        _arm(kill_at)
        train(cfg, out, resume="auto")
    except BaseException:  # noqa: BLE001 - reported through the exit code
        traceback.print_exc()
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(3)
    os._exit(0)


def _run(cfg, out, kill_at=None) -> int:
    p = FORK.Process(target=_child, args=(cfg, out, kill_at))
    p.start()
    p.join(timeout=120)
    assert p.exitcode is not None, "training hung"
    return p.exitcode


def _records(run):
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        out.append({k: v for k, v in json.loads(line).items() if k not in VOLATILE})
    return out


@pytest.fixture(scope="module")
def reference(tiny_imagenet, tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    cfg = _cfg(tiny_imagenet, base / "index")
    assert _run(cfg, base / "reference") == 0
    return cfg, base, base / "reference"


def _assert_like_reference(run, reference_run, where: str) -> None:
    last, ref_last = load_checkpoint(run / "last.pt"), load_checkpoint(reference_run / "last.pt")
    assert last.train["step"] == ref_last.train["step"], where
    for k, v in ref_last.weights.items():
        assert torch.equal(v, last.weights[k]), f"{where}: last.pt {k} differs"
    assert (run / "best.pt").is_file(), f"{where}: best.pt lost"
    best, ref_best = load_checkpoint(run / "best.pt"), load_checkpoint(reference_run / "best.pt")
    records = _records(run)
    recorded_best = min(r["val_top1_error"] for r in records if r["kind"] == "val")
    assert best.train["best_top1_error"] == last.train["best_top1_error"] == recorded_best, where
    for k, v in ref_best.weights.items():
        assert torch.equal(v, best.weights[k]), f"{where}: best.pt {k} differs"
    assert records == _records(reference_run), f"{where}: metrics.jsonl differs (records lost or repeated)"
    assert not list(run.glob(".*.tmp")), f"{where}: temporary files left"


def test_sigkill_at_every_point_then_resume_matches_an_uninterrupted_run(reference):
    cfg, base, reference_run = reference
    kills = 0
    for k in itertools.count():
        run = base / f"killed_at_{k}"
        code = _run(cfg, run, kill_at=k)
        if code == 0:
            break  # k is past the last kill point: the run finished untouched
        assert code == -signal.SIGKILL, f"kill point {k}: exit code {code}"
        kills += 1
        assert _run(cfg, run) == 0, f"resume after kill point {k} failed"
        _assert_like_reference(run, reference_run, f"kill point {k}")
    # 8 steps, and 4 points around each of the 6 checkpoint writes (2 best.pt, 4 last.pt)
    assert kills >= 8 + 4 * 5


def test_repeated_kills_and_resumes_end_like_an_uninterrupted_run(reference):
    """Every attempt is killed some points after it starts (one more each time, so that the
    attempts reach checkpoints and make progress), until one finishes."""
    cfg, base, reference_run = reference
    run = base / "killed_repeatedly"
    for attempt in range(40):
        code = _run(cfg, run, kill_at=6 + attempt)
        if code == 0:
            break
        assert code == -signal.SIGKILL, f"attempt {attempt}: exit code {code}"
    else:
        pytest.fail("the run never finished")
    assert attempt >= 3
    _assert_like_reference(run, reference_run, f"after {attempt} kills")


def _children(pid: int) -> set[int]:
    out = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out.update(int(c) for c in f.read().split())
    return out


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads a process's children from /proc")
def test_a_training_with_loader_workers_killed_mid_epoch_resumes_at_once(tiny_imagenet, tmp_path):
    """SIGKILL leaves the loader workers orphaned for the seconds they take to notice; they must
    not hold the run folder's lock meanwhile, or an immediate --resume is refused."""
    import fcntl
    import subprocess
    import time

    run = tmp_path / "run"
    sets = [*TINY_OVERRIDES, "data.workers=2", "data.persistent_workers=true", "train.epochs=6",
            "train.checkpoint_every_steps=1", "train.plot=false"]
    argv = [sys.executable, "-m", "verydeep", "train", "--config", "demo", "--data", str(tiny_imagenet),
            "--out", str(run), *itertools.chain.from_iterable(("--set", s) for s in sets)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:  # until step 2 of epoch 1 is done
            if (run / "last.pt").is_file() and (run / "metrics.jsonl").is_file() and any(
                    json.loads(line).get("step", 0) >= 2 for line in (run / "metrics.jsonl").read_text().splitlines()
                    if line.endswith("}")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the training ended before it could be killed: {proc.stderr.read().decode()}"
        workers = _children(proc.pid)
        assert len(workers) >= 2, "the loader workers are not running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any(os.path.exists(f"/proc/{w}") for w in workers)  # orphans still alive: the case in point
    with open(run / ".lock", "r+") as f:  # nobody holds the lock: its holder is dead
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f, fcntl.LOCK_UN)
    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run / "last.pt").train["epoch"] == 6
