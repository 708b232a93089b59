"""The run folder knows its run: a lock, no silent replacing, --resume that checks what it continues,
and exit codes a scheduler can act on."""

from __future__ import annotations

import logging
import os
import shutil
import signal

import pytest

from verydeep.checkpoint import load as load_checkpoint
from verydeep.cli.main import main
from verydeep.config import load_config
from verydeep.errors import (EXIT_CHECKPOINT, EXIT_DATA, EXIT_IO, EXIT_RUN_FOLDER, EXIT_USAGE, CheckpointError,
                             Interrupted, RunFolderError, exit_code_for_signal)
from verydeep.train import loop
from verydeep.train.loop import train
from verydeep.train.run_folder import RunFolderLock

from .conftest import TINY_OVERRIDES, write_tiny_imagenet

QUICK = ["train.plot=false", "train.epochs=1"]


def _cfg(root, *extra):
    return load_config(None, [*TINY_OVERRIDES, f"data.root={root}", *QUICK, *extra])


def _cli(root, out, *flags, sets=()):
    args = ["train", "--config", "demo", "--data", str(root), "--out", str(out), *flags]
    for s in [*TINY_OVERRIDES, *QUICK, *sets]:
        args += ["--set", s]
    return main(args)


def test_a_second_training_into_a_locked_folder_fails_at_once_naming_the_first(tiny_imagenet, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = RunFolderLock(run)
    holder.acquire()  # as a training in another process would (flock: per open file, not per process)
    try:
        with pytest.raises(RunFolderError, match=rf"in use: process {os.getpid()} on .* is training there"):
            train(_cfg(tiny_imagenet), run)
        assert _cli(tiny_imagenet, run) == EXIT_RUN_FOLDER
        assert "is in use" in capsys.readouterr().err.strip().splitlines()[-1]
        assert not (run / "config.yaml").exists()  # the first run's files untouched
    finally:
        holder.release()
    train(_cfg(tiny_imagenet), run)  # released: the folder is usable again
    # ...and the run released its own lock when it ended
    again = RunFolderLock(run)
    again.acquire()
    again.release()


def test_a_finished_run_is_not_replaced_without_overwrite(tiny_imagenet, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(tiny_imagenet), run)
    (run / "notes.txt").write_text("mine")
    before = (run / "last.pt").read_bytes()
    assert _cli(tiny_imagenet, run) == EXIT_RUN_FOLDER
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (run / "last.pt").read_bytes() == before
    assert _cli(tiny_imagenet, run, "--overwrite", sets=["optim.lr=0.02"]) == 0
    assert load_checkpoint(run / "last.pt").config["optim"]["lr"] == 0.02
    assert (run / "notes.txt").read_text() == "mine"  # only run files are replaced
    records = (run / "metrics.jsonl").read_text().splitlines()
    assert len([r for r in records if '"kind": "val"' in r]) == 1  # not appended to the old run's


def test_resume_with_nothing_to_resume_fails_unless_asked_to_start(tiny_imagenet, tmp_path, capsys):
    typo = tmp_path / "typo"
    assert _cli(tiny_imagenet, typo, "--resume") == EXIT_RUN_FOLDER
    assert "nothing to resume" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (typo / "last.pt").exists()
    assert _cli(tiny_imagenet, typo, "--auto-resume") == 0  # a job script's "resume if you can"
    assert load_checkpoint(typo / "last.pt").train["step"] == 4
    assert _cli(tiny_imagenet, typo, "--auto-resume", sets=["train.epochs=2"]) == 0  # now it continues
    assert load_checkpoint(typo / "last.pt").train["step"] == 8


def test_resume_names_the_config_keys_that_differ(tiny_imagenet, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny_imagenet), run)
    with pytest.raises(CheckpointError) as e:
        train(_cfg(tiny_imagenet, "optim.lr=0.02", "model.width=0.125"), run, resume=True)
    msg = str(e.value)
    assert "optim.lr: 0.01 -> 0.02" in msg and "model.width: 0.0625 -> 0.125" in msg
    assert str(run / "last.pt") in msg and "size mismatch" not in msg
    # how long to train, how often to log, where the data is: may change
    result = train(_cfg(tiny_imagenet, "train.epochs=2", "train.log_every=3", "data.workers=0"), run, resume=True)
    assert result.steps == 8


def test_resume_refuses_a_changed_class_list_with_the_same_count(tiny_imagenet, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(tiny_imagenet), run)
    moved = tmp_path / "data"
    shutil.copytree(tiny_imagenet, moved)
    (moved / "train" / "n00000001").rename(moved / "train" / "n00000009")
    (moved / "val" / "n00000001").rename(moved / "val" / "n00000009")
    with pytest.raises(CheckpointError, match=r"training classes changed \(not in the data: n00000001; new in the data: n00000009\)"):
        train(_cfg(moved, "train.epochs=2"), run, resume=True)
    fewer = tmp_path / "fewer"
    write_tiny_imagenet(fewer, classes=2)
    assert _cli(fewer, run, "--resume", sets=["train.epochs=2"]) == EXIT_CHECKPOINT
    err = capsys.readouterr().err.strip()
    assert "3 classes in the checkpoint, 2 in the data" in err and "Traceback" not in err


def test_a_signal_ends_the_run_with_128_plus_its_number_and_an_honest_summary(tiny_imagenet, tmp_path, monkeypatch,
                                                                              capsys, caplog):
    real = loop.train_step
    calls = {"n": 0}

    def preempted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's notice, mid-epoch
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", preempted)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="verydeep.train.loop"):
        code = _cli(tiny_imagenet, run)
    assert code == exit_code_for_signal(signal.SIGTERM) == 143
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == (f"verydeep: interrupted by SIGTERM at step 2: checkpoint {run / 'last.pt'} written; "
                         f"continue with --resume")
    summary = caplog.records[-1].getMessage()
    assert "best val top-1 error n/a (no validation yet)" in summary and "n/a%" not in summary
    assert "best.pt" not in summary and str(run / "last.pt") in summary  # names only what exists
    assert not (run / "best.pt").exists() and load_checkpoint(run / "last.pt").train["step"] == 2
    monkeypatch.setattr(loop, "train_step", real)
    assert _cli(tiny_imagenet, run, "--resume") == 0


def test_the_python_api_raises_interrupted(tiny_imagenet, tmp_path, monkeypatch):
    real = loop.train_step

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupted)
    with pytest.raises(Interrupted) as e:
        train(_cfg(tiny_imagenet), tmp_path / "run")
    assert e.value.exit_code == 130 and e.value.signal_name == "SIGINT"


def test_orphan_temporary_files_of_killed_writes_are_removed(tiny_imagenet, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    orphans = [run / ".last.pt.abc123.tmp", run / ".best.pt.x9.tmp"]
    for p in orphans:
        p.write_bytes(b"half a checkpoint")
    (run / ".keep.tmp").write_text("not ours")
    train(_cfg(tiny_imagenet), run, resume="auto")
    assert not any(p.exists() for p in orphans) and (run / ".keep.tmp").exists()


def test_resume_and_overwrite_exclude_each_other(tiny_imagenet, tmp_path):
    with pytest.raises(ValueError, match="exclude each other"):
        train(_cfg(tiny_imagenet), tmp_path / "run", resume=True, overwrite=True)


def test_ctrl_c_during_start_up_ends_in_one_line_and_frees_the_folder(tiny_imagenet, tmp_path, monkeypatch, capsys):
    from verydeep.train import setup as setup_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(setup_module, "build_runtime", interrupted)  # once the folder is claimed
    run = tmp_path / "run"
    assert _cli(tiny_imagenet, run) == exit_code_for_signal(signal.SIGINT)
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == "verydeep: interrupted" and "Traceback" not in err
    assert not run.exists()  # the folder this start made held only its lock: gone with it
    monkeypatch.undo()
    assert _cli(tiny_imagenet, run, "--auto-resume") == 0  # the lock went with the interrupted start


def test_a_read_only_run_folder_ends_in_one_line(tiny_imagenet, tmp_path, monkeypatch, capsys):
    import errno

    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)  # tests run as root: chmod would not stop a write
    run = tmp_path / "run"
    assert _cli(tiny_imagenet, run) == EXIT_IO
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == f"verydeep: error: {run / '.lock'}: Read-only file system"
    assert "Traceback" not in err


def test_a_forked_child_neither_holds_nor_releases_the_lock(tmp_path):
    """Loader workers are forked while the lock is held: they must not keep it alive after the
    trainer dies, nor release it for the living trainer."""
    import fcntl
    import multiprocessing

    lock = RunFolderLock(tmp_path)
    lock.acquire()
    try:
        def child():
            lock.release()  # a forked copy of the object: must leave the parent's lock alone
            try:  # and the child holds no copy of it: its own attempt meets the parent's lock only
                with open(tmp_path / ".lock", "r+") as f:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os._exit(1)
            except BlockingIOError:
                os._exit(0)

        p = multiprocessing.get_context("fork").Process(target=child)
        p.start()
        p.join(timeout=60)
        assert p.exitcode == 0
        with pytest.raises(RunFolderError, match="is in use"):  # still held by this process
            RunFolderLock(tmp_path).acquire()
    finally:
        lock.release()
    again = RunFolderLock(tmp_path)
    again.acquire()
    again.release()


def test_resume_from_the_folder_takes_the_runs_own_config(tiny_imagenet, tmp_path, capsys):
    """--resume RUN_DIR (or --out RUN_DIR --resume) without --config, and without repeating the
    first start's overrides: the run's config.yaml is the recipe (issue 19)."""
    run = tmp_path / "run"
    assert _cli(tiny_imagenet, run, sets=["optim.lr=0.02"]) == 0  # an override only the first start gives
    sets = ["--set", "train.epochs=2", "--set", "train.plot=false"]
    assert main(["train", "--resume", str(run), *sets]) == 0
    assert load_checkpoint(run / "last.pt").train["step"] == 8  # 2 epochs of 4 steps
    assert load_config(run / "config.yaml").optim.lr == 0.02
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--set", "train.plot=false"]) == 0
    assert load_checkpoint(run / "last.pt").train["step"] == 12  # 3 epochs of 4 steps
    # torchvision's spelling, the checkpoint itself: its folder
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "4", "--set", "train.plot=false"]) == 0
    assert load_checkpoint(run / "last.pt").train["step"] == 16  # 4 epochs of 4 steps
    capsys.readouterr()
    assert main(["train", "--config", "paper_A_S256", "--resume", str(run)]) == EXIT_USAGE
    assert "trained with the recipe 'demo'" in capsys.readouterr().err.strip().splitlines()[-1]


def test_resume_with_more_epochs_says_what_it_does_to_a_cosine_schedule(tiny_imagenet, tmp_path, caplog):
    run = tmp_path / "run"
    # 24 images at batch 6: 4 steps an epoch; one epoch of cosine from 0.01 ends at LR 0 (step 4)
    assert _cli(tiny_imagenet, run, sets=["schedule.name=cosine", "schedule.warmup_epochs=0"]) == 0
    with caplog.at_level(logging.WARNING, logger="verydeep"):
        assert main(["train", "--resume", str(run), "--epochs", "3", "--set", "train.plot=false"]) == 0
    said = [r.getMessage() for r in caplog.records if "train.epochs 1 -> 3" in r.getMessage()]
    # stretched to 12 steps: at step 4, 0.01 * (1 + cos(pi * 4/12)) / 2 = 0.0075
    assert len(said) == 1 and "ends after 12 steps instead of 4" in said[0]
    assert "stretched" in said[0] and "jumps from 0 to 0.0075" in said[0]


def test_the_run_folder_is_checked_after_the_net_and_the_data(tiny_imagenet, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(tiny_imagenet, run) == 0  # a folder holding a run: refused without --resume, but only later
    assert _cli(tiny_imagenet, run, sets=["model.name=vgg17"]) == EXIT_USAGE
    assert "unknown model name 'vgg17'" in capsys.readouterr().err.strip().splitlines()[-1]
    assert _cli(tmp_path / "no_data", run) == EXIT_DATA
    assert "no_data" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_failed_start_leaves_no_folder_holding_only_its_lock(tiny_imagenet, tmp_path):
    run = tmp_path / "runs" / "new"
    assert _cli(tiny_imagenet, run, sets=["train.batch_size=1000"]) == EXIT_USAGE  # fails after the claim
    assert not run.exists()
    run.mkdir(parents=True)  # a folder the user made stays
    assert _cli(tiny_imagenet, run, sets=["train.batch_size=1000"]) == EXIT_USAGE
    assert run.is_dir()
