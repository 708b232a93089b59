import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from verydeep.checkpoint import load as load_checkpoint
from verydeep.config import load_config
from verydeep.models import create_model
from verydeep.train import step
from verydeep.train.loop import train
from verydeep.train.setup import batch_plan
from verydeep.train.loss import classification_loss
from verydeep.train.nonfinite import NonFiniteLossError

from .conftest import TINY_OVERRIDES


def _cfg(root, *extra):
    return load_config(None, [*TINY_OVERRIDES, f"data.root={root}", *extra])


def test_a_tiny_run_writes_everything(tiny_imagenet, tmp_path):
    result = train(_cfg(tiny_imagenet, "train.tensorboard=true"), tmp_path / "run")
    run = tmp_path / "run"
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.jsonl", "curves.png"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").iterdir())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"]
    assert len(val) == 2
    for r in val:
        assert {"epoch", "step", "val_loss", "val_top1_error", "val_top5_error"} <= set(r)
        assert 0 <= r["val_top1_error"] <= 100 and r["val_top5_error"] <= r["val_top1_error"]
        assert r["val_images"] == 9
    train_recs = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_recs] == list(range(1, 9))  # 24 images / 6 = 4 steps x 2 epochs
    assert all(r["lr"] == 0.01 for r in train_recs)
    assert result.steps == 8 and result.epochs_done == 2
    state = load_checkpoint(run / "last.pt")
    assert state.train["step"] == 8 and state.classes == ["n00000000", "n00000001", "n00000002"]
    assert result.best_top1_error == min(r["val_top1_error"] for r in val)


def test_cosine_lr_sequence_in_a_toy_run(tiny_imagenet, tmp_path):
    train(_cfg(tiny_imagenet, "schedule.name=cosine", "schedule.warmup_epochs=1",
               "schedule.warmup_start_factor=0.5", "train.plot=false"), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    import math
    expected = [0.005, 0.00625, 0.0075, 0.00875] + [0.005 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    assert lrs == pytest.approx(expected)


def test_iteration_cap_stops_the_run(tiny_imagenet, tmp_path):
    result = train(_cfg(tiny_imagenet, "train.max_iterations=3", "train.plot=false"), tmp_path / "run")
    assert result.steps == 3 and "iterations" in result.stopped_because
    assert "completed 2 epochs" == train(_cfg(tiny_imagenet, "train.plot=false"), tmp_path / "b").stopped_because


def test_accumulation_gives_identical_gradients():
    from verydeep.parallel.config import ParallelConfig
    from verydeep.parallel.distributed import DistInfo
    from verydeep.parallel.strategy import build_strategy

    torch.manual_seed(0)
    model = create_model("A", num_classes=5, width=1 / 16, head_size=1, dropout=0.0).double()
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 5, (8,))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    grads, losses = [], []
    for accum in (1, 2, 4):
        strategy = build_strategy(model, ParallelConfig(), DistInfo(), crop_size=32, accum=accum)
        model.zero_grad()
        losses.append(step.forward_backward(strategy, x, y, classification_loss(), None, scaler))
        grads.append([p.grad.clone() for p in model.parameters()])
    for loss, g in zip(losses[1:], grads[1:]):
        torch.testing.assert_close(loss, losses[0], rtol=0, atol=1e-12)
        for a, b in zip(grads[0], g):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_batch_plan():
    assert batch_plan(256, 4, None) == (64, 1)
    assert batch_plan(256, 4, 16) == (64, 4)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        batch_plan(256, 3, None)
    with pytest.raises(ValueError, match="micro_batch_size=24"):
        batch_plan(256, 2, 24)


def test_micro_batches_give_the_same_run(tiny_imagenet, tmp_path):
    a = train(_cfg(tiny_imagenet, "train.plot=false", "train.epochs=1"), tmp_path / "a")
    b = train(_cfg(tiny_imagenet, "train.plot=false", "train.epochs=1", "train.micro_batch_size=2"), tmp_path / "b")
    wa, wb = load_checkpoint(a.run_dir / "last.pt").weights, load_checkpoint(b.run_dir / "last.pt").weights
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tiny_imagenet, tmp_path, monkeypatch):
    real = step.forward_backward
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(step, "forward_backward", poisoned)
    cfg = _cfg(tiny_imagenet, "train.checkpoint_every_steps=1", "train.plot=false")
    with pytest.raises(NonFiniteLossError, match="at step 2 "):
        train(cfg, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state.train["step"] == 2
    assert all(torch.isfinite(v).all() for v in state.weights.values() if v.is_floating_point())


def test_nan_loss_skip_mode(tiny_imagenet, tmp_path, monkeypatch):
    real = step.forward_backward
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(step, "forward_backward", poisoned)
    # one of 8 steps skipped: within a 20% share (the default 10% would fail the run)
    result = train(_cfg(tiny_imagenet, "train.nonfinite=skip", "train.max_skipped_share=0.2", "train.plot=false"),
                   tmp_path / "run")
    assert result.steps == 8 and result.skipped_steps == 1
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "skipped"] == [1]


def _weights(path):
    return load_checkpoint(path).weights


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_exact(tiny_imagenet, tmp_path):
    """Kill a run with SIGKILL inside an epoch; --resume ends bitwise equal to an uninterrupted run."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  epochs: 3\n")
    # dropout on, so the resumed run must also reproduce dropout masks
    args = [sys.executable, "-m", "verydeep", "train", "--config", str(recipe), "--data", str(tiny_imagenet)]
    sets = [x for o in TINY_OVERRIDES if not o.startswith(("train.epochs", "model.dropout"))
            for x in ("--set", o)] + ["--set", "model.dropout=0.5", "--set", "train.checkpoint_every_steps=1",
                                      "--set", "train.plot=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full = subprocess.run(args + sets + ["--out", str(tmp_path / "full")], env=env, capture_output=True, timeout=300)
    assert full.returncode == 0, full.stderr.decode()[-3000:]

    proc = subprocess.Popen(args + sets + ["--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline:
        if last.is_file():
            try:
                state = load_checkpoint(last)
            except ValueError:
                state = None  # caught between write and rename: never happens with atomic writes
            if state and state.train["step"] >= 6 and state.train["batch_in_epoch"] not in (0,):
                proc.send_signal(signal.SIGKILL)
                killed_at = state.train["step"]
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert killed_at is not None, "the run finished before it could be killed mid-epoch"
    assert proc.returncode == -signal.SIGKILL
    resumed = subprocess.run(args + sets + ["--out", str(tmp_path / "killed"), "--resume"], env=env,
                             capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(last)
    assert load_checkpoint(last).train["step"] == 12
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume (killed at step {killed_at})"
