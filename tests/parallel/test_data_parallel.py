"""2-rank DistributedDataParallel (torchrun, gloo, CPU) against 1 process at the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from verydeep.checkpoint import load as load_checkpoint

from ..train.conftest import TINY_OVERRIDES, write_tiny_imagenet

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _train_args(data, out, *extra):
    sets = [x for o in TINY_OVERRIDES if not o.startswith("train.epochs") for x in ("--set", o)]
    return ["-m", "verydeep", "train", "--config", str(Path(__file__).parent / "tiny.yaml"), "--data", str(data),
            "--out", str(out), *sets, "--set", "train.epochs=2", "--set", "train.plot=false", *extra]


def _run(cmd, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"timed out after {timeout}s: {' '.join(cmd)}\n{err[-4000:]}")
    assert proc.returncode == 0, f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-6000:]}"
    return proc


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    data = write_tiny_imagenet(tmp_path / "data", train_per_class=8, val_per_class=3)  # val: 9, odd
    _run([sys.executable, *_train_args(data, tmp_path / "one")])
    two = _run([*TORCHRUN, *_train_args(data, tmp_path / "two")])
    a, b = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert a.train["step"] == b.train["step"] == 8
    assert b.train["world_size"] == 2
    for k in a.weights:
        torch.testing.assert_close(a.weights[k], b.weights[k], rtol=0, atol=1e-6, msg=k)
    va = [line for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    vb = [line for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    import json
    for ra, rb in zip(map(json.loads, va), map(json.loads, vb)):
        assert rb["val_images"] == ra["val_images"] == 9  # each val image counted once
        assert rb["val_top1_error"] == pytest.approx(ra["val_top1_error"])
    # only rank 0 wrote: one set of files, no duplicate lines
    assert len(va) == len(vb) == 2
    assert "Traceback" not in two.stderr


@pytest.mark.slow
def test_ddp_checkpoint_resumes_in_a_single_process(tmp_path):
    data = write_tiny_imagenet(tmp_path / "data")
    _run([*TORCHRUN, *_train_args(data, tmp_path / "run", "--set", "train.epochs=1")])
    _run([sys.executable, *_train_args(data, tmp_path / "run"), "--resume"])
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state.train["step"] == 8 and state.train["world_size"] == 1


@pytest.mark.slow
def test_model_parallel_checkpoints_resume_in_other_modes_through_the_cli(tmp_path):
    """pipeline (2 stages) -> hybrid DP-conv/TP-FC -> a plain single process, one run directory.
    A resume starts from the run's own config.yaml, so a new mode overrides the stored keys."""
    data = write_tiny_imagenet(tmp_path / "data")
    run = tmp_path / "run"
    _run([*TORCHRUN, *_train_args(data, run, "--set", "train.epochs=1", "--set", "parallel.pipeline_stages=2",
                                  "--set", "parallel.microbatches=3")])
    assert load_checkpoint(run / "last.pt").train["parallel_mode"] == "pipeline"
    _run([*TORCHRUN, *_train_args(data, run, "--set", "train.epochs=2", "--set", "parallel.tensor_parallel_fc=true",
                                  "--set", "parallel.pipeline_stages=1"), "--resume"])
    assert load_checkpoint(run / "last.pt").train["parallel_mode"] == "hybrid"
    _run([sys.executable, *_train_args(data, run, "--set", "train.epochs=3", "--set", "parallel.tensor_parallel_fc=false"),
          "--resume"])
    state = load_checkpoint(run / "last.pt")
    assert state.train["step"] == 12 and state.train["parallel_mode"] == "data_parallel"
    from verydeep.checkpoint import load_model

    assert load_model(run / "last.pt").spec.config == "A"
