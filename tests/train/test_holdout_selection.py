"""A run with data.holdout validates on held-out training images, never trains on them, and
picks the same ones again when it resumes."""

import json

import pytest

from verydeep.config import load_config
from verydeep.data import discover
from verydeep.errors import CheckpointError, UsageError
from verydeep.train.loop import train
from verydeep.train.setup import setup

from .conftest import TINY_OVERRIDES


def _cfg(root, *extra):
    return load_config(None, [*TINY_OVERRIDES, f"data.root={root}", "data.holdout=2", "train.plot=false", *extra])


def test_a_run_selects_on_held_out_training_images(tiny_imagenet, tmp_path):
    # 3 classes x 8 training images, 2 of each held out: 18 trained on (3 steps of 6), 6 validate
    result = train(_cfg(tiny_imagenet, "train.epochs=1"), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_images"] for r in records if r["kind"] == "val"] == [6]
    assert result.steps == 3
    resumed = train(_cfg(tiny_imagenet, "train.epochs=2"), tmp_path / "run", resume=True)
    assert resumed.steps == 6
    # another held-out set would select on images the run trained on: refused, naming the key
    with pytest.raises((CheckpointError, UsageError), match="data.holdout"):
        train(_cfg(tiny_imagenet, "train.epochs=3", "data.holdout=3"), tmp_path / "run", resume=True)


def test_the_training_loader_never_holds_a_held_out_image(tiny_imagenet, tmp_path):
    cfg = _cfg(tiny_imagenet)
    run, _ = setup(cfg, tmp_path / "run")
    try:
        held = {p for p, _ in discover(cfg.data).holdout}
        assert len(held) == 6 and run.splits.selection == run.splits.holdout
        assert not held & {p for p, _ in run.splits.train} and len(run.splits.train) == 18
        assert not held & {p for p, _ in run.loader.dataset.samples}  # what the batches are drawn from
    finally:
        run.release_folder()
