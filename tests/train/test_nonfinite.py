"""Non-finite losses in a training run: stopped with one line and exit code 5 (diverged),
never naming a checkpoint that does not exist; under ``train.nonfinite=skip`` counted in the
metrics and the result, and the run fails when too many steps were skipped. Both with the
device-side guard every run with plain parameters uses (fused optimiser, no host read) and
with the host check of the unfused optimisers (DTensor shards, fp16 loss scaling)."""

from __future__ import annotations

import json

import pytest
import torch

from verydeep.checkpoint import load as load_checkpoint
from verydeep.cli.main import main
from verydeep.config import load_config
from verydeep.errors import EXIT_DIVERGED
from verydeep.train import setup as run_setup
from verydeep.train import step as step_module
from verydeep.train.loop import train
from verydeep.train.optim import parameter_groups
from verydeep.train.nonfinite import NonFiniteLossError, NonFiniteWeights, TooManySkippedSteps

from .conftest import TINY_OVERRIDES


def _cfg(root, *extra):
    return load_config(None, [*TINY_OVERRIDES, f"data.root={root}", "train.plot=false", *extra])


def _poison(monkeypatch, bad_calls):
    """forward_backward's loss is NaN on the given calls (0-based), its gradients untouched."""
    real = step_module.forward_backward
    calls = {"n": 0}

    def poisoned(*a, **k):
        loss = real(*a, **k)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] - 1 in bad_calls else loss

    monkeypatch.setattr(step_module, "forward_backward", poisoned)


@pytest.fixture
def host_guard(monkeypatch):
    """The run's optimiser unfused (per-tensor loops, as for DTensor shards): the step reads its
    non-finite flag on the host and stops at once."""
    def unfused(model, cfg, device, pretrained=frozenset()):
        return torch.optim.SGD(parameter_groups(model, cfg, pretrained), lr=cfg.lr, momentum=cfg.momentum,
                               foreach=False)

    monkeypatch.setattr(run_setup, "build_optimizer", unfused)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_device_guard_stops_at_the_next_log_line(tiny_imagenet, tmp_path, monkeypatch):
    _poison(monkeypatch, {2})
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 2 .epoch 1, batch 2.") as e:
        train(_cfg(tiny_imagenet, "train.log_every=2"), tmp_path / "run")
    assert "no checkpoint was written" in str(e.value) and not (tmp_path / "run" / "last.pt").exists()
    assert [r["step"] for r in _records(tmp_path / "run") if r["kind"] == "train"] == [2]  # step 4's never written


def test_device_guard_never_checkpoints_past_a_non_finite_step(tiny_imagenet, tmp_path, monkeypatch):
    _poison(monkeypatch, {2})
    with pytest.raises(NonFiniteLossError, match="at step 2 ") as e:
        train(_cfg(tiny_imagenet, "train.checkpoint_every_steps=1", "train.log_every=10"), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state.train["step"] == 2 and f"{tmp_path / 'run' / 'last.pt'} holds the last good state" in str(e.value)
    assert all(torch.isfinite(v).all() for v in state.weights.values() if v.is_floating_point())


def _train_cli(root, out, *sets):
    recipe = out.parent / "recipe.yaml"
    recipe.write_text("train:\n  epochs: 2\n")
    args = [x for o in TINY_OVERRIDES for x in ("--set", o)] + [x for o in sets for x in ("--set", o)]
    return main(["train", "--config", str(recipe), "--data", str(root), "--out", str(out), *args])


def test_a_diverged_run_ends_in_one_line_and_exit_code_5(tiny_imagenet, tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, {0})
    assert _train_cli(tiny_imagenet, tmp_path / "run", "train.plot=false") == EXIT_DIVERGED
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("verydeep:")]
    assert "Traceback" not in err and len(lines) == 1
    assert "loss is nan at step 0" in lines[0] and "no checkpoint was written" in lines[0]
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("guard", ["host", "device"])
def test_too_many_skipped_steps_fail_the_run(tiny_imagenet, tmp_path, monkeypatch, request, guard):
    """7 of 8 steps skipped: not 'completed', but exit code 5; every skip counted."""
    if guard == "host":
        request.getfixturevalue("host_guard")
    _poison(monkeypatch, {0, 1, 2, 3, 5, 6, 7})
    with pytest.raises(TooManySkippedSteps, match="7 of 8 steps had a non-finite loss") as e:
        train(_cfg(tiny_imagenet, "train.nonfinite=skip"), tmp_path / "run")
    assert e.value.exit_code == EXIT_DIVERGED
    records = _records(tmp_path / "run")
    assert [r["step"] for r in records if r["kind"] == "skipped"] == [0, 1, 2, 3, 5, 6, 7]
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["skipped"] for r in train_records] == [1, 1, 1, 1, 0, 1, 1, 1]
    assert [r["loss"] is None for r in train_records] == [True] * 4 + [False] + [True] * 3  # never 0.0
    assert load_checkpoint(tmp_path / "run" / "last.pt").train["skipped_steps"] == 7


def test_the_skipped_count_reaches_the_cli_as_exit_code_5(tiny_imagenet, tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, set(range(1, 8)))
    assert _train_cli(tiny_imagenet, tmp_path / "run", "train.plot=false", "train.nonfinite=skip") == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "Traceback" not in err and "7 of 8 steps had a non-finite loss" in err


def _finite_checkpoints(run_dir):
    """The checkpoints in ``run_dir``, each asserted to hold finite tensors only."""
    found = []
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).exists():
            weights = load_checkpoint(run_dir / name, finite=False).weights
            assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()), name
            found.append(name)
    return found


@pytest.mark.parametrize("lr, policy", [("1e3", "stop"), ("1e6", "skip")])
def test_a_diverging_learning_rate_ends_the_run_without_a_non_finite_checkpoint(tiny_imagenet, tmp_path, capsys,
                                                                                lr, policy):
    """The settings that once left NaN/inf weights (batch-norm statistics) in best.pt and
    last.pt with a finite loss: the run stops as diverged (exit 5), and no checkpoint it
    leaves holds a NaN or inf."""
    out = tmp_path / "run"
    assert _train_cli(tiny_imagenet, out, "model.batch_norm=true", f"optim.lr={lr}", f"train.nonfinite={policy}",
                      "train.plot=false") == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "Traceback" not in err and len([x for x in err.splitlines() if x.startswith("verydeep:")]) == 1
    _finite_checkpoints(out)


def test_a_validation_with_non_finite_loss_is_never_a_best(tiny_imagenet, tmp_path):
    """lr 1e3 without batch norm under skip: the weights stay finite but so large that the
    validation logits overflow (loss NaN, 66.67% "error"): no best.pt, no best error."""
    result = train(_cfg(tiny_imagenet, "optim.lr=1e3", "train.nonfinite=skip", "train.max_skipped_share=1.0"),
                   tmp_path / "run")
    vals = [r for r in _records(tmp_path / "run") if r["kind"] == "val"]
    assert vals and all(r["val_nonfinite_images"] == r["val_images"] for r in vals)
    assert result.best_top1_error is None and _finite_checkpoints(tmp_path / "run") == ["last.pt"]


def _plant_inf_gradient(monkeypatch, bad_calls):
    """One gradient element is inf after the given forward_backward calls; the loss stays finite."""
    real = step_module.forward_backward
    calls = {"n": 0}

    def planted(strategy, *a, **k):
        loss = real(strategy, *a, **k)
        calls["n"] += 1
        if calls["n"] - 1 in bad_calls:
            (g := next(p for p in strategy.parameters() if p.grad is not None).grad)[(0,) * g.dim()] = float("inf")
        return loss

    monkeypatch.setattr(step_module, "forward_backward", planted)


@pytest.mark.parametrize("guard", ["host", "device"])
def test_an_inf_gradient_stops_the_run_with_exit_code_5(tiny_imagenet, tmp_path, monkeypatch, capsys, request,
                                                       guard):
    if guard == "host":
        request.getfixturevalue("host_guard")
    _plant_inf_gradient(monkeypatch, {1})
    assert _train_cli(tiny_imagenet, tmp_path / "run", "train.plot=false") == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "Traceback" not in err and "a gradient is non-finite at step 1 (loss " in err


def test_an_inf_gradient_is_skipped_and_counted_under_skip(tiny_imagenet, tmp_path, monkeypatch):
    _plant_inf_gradient(monkeypatch, {3})
    result = train(_cfg(tiny_imagenet, "train.nonfinite=skip", "train.max_skipped_share=0.2"), tmp_path / "run")
    assert result.skipped_steps == 1 and result.steps == 8
    train_records = [r for r in _records(tmp_path / "run") if r["kind"] == "train"]
    assert [r["skipped"] for r in train_records] == [0, 0, 0, 1, 0, 0, 0, 0]
    assert train_records[3]["loss"] is None  # the skipped step's finite loss is not averaged in


def test_a_checkpoint_with_non_finite_weights_is_refused_and_the_old_one_kept(tiny_imagenet, tmp_path):
    run, state = run_setup.setup(_cfg(tiny_imagenet), tmp_path / "run")
    try:
        run.save_checkpoint(state, "last.pt")
        before = (tmp_path / "run" / "last.pt").read_bytes()
        with torch.no_grad():
            (p := next(run.strategy.parameters()))[(0,) * p.dim()] = float("nan")
        for name in ("last.pt", "best.pt"):
            with pytest.raises(NonFiniteWeights, match=f"{name} not written.*1 of .* tensors hold NaN or inf "
                                                       r"\(features.0.weight\)") as e:
                run.save_checkpoint(state, name)
            assert e.value.exit_code == EXIT_DIVERGED
        assert (tmp_path / "run" / "last.pt").read_bytes() == before and not (tmp_path / "run" / "best.pt").exists()
    finally:
        run.metrics.close()
        run.release_folder()
