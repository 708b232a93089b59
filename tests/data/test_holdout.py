"""Model selection on held-out training images (data.holdout): the split discover makes."""

import pytest

from verydeep.config import ConfigError, load_config
from verydeep.data import DataError, discover
from verydeep.data.holdout import holdout_count, split_holdout

from .conftest import WNIDS, write_class_folders


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "data"
    write_class_folders(root / "train", WNIDS, per_class=10)
    write_class_folders(root / "val", WNIDS, per_class=2, seed=50)
    return root


def test_held_out_images_leave_training_balanced_per_class(root, cfg_for):
    splits = discover(cfg_for(root, holdout=3))
    assert len(splits.holdout) == 9 and len(splits.train) == 21 and len(splits.val) == 6
    assert [sum(1 for _, lab in splits.holdout if lab == c) for c in range(3)] == [3, 3, 3]
    held, trained = {p for p, _ in splits.holdout}, {p for p, _ in splits.train}
    assert not held & trained  # never trained on
    assert held | trained == {p for p, _ in discover(cfg_for(root)).train}
    assert splits.selection == splits.holdout  # what training validates on
    assert not held & {p for p, _ in splits.val}


def test_without_holdout_training_validates_on_the_validation_set(root, cfg_for):
    splits = discover(cfg_for(root))
    assert splits.holdout == [] and splits.selection == splits.val and len(splits.train) == 30


def test_the_split_is_the_same_every_time_and_per_class(root, cfg_for, tmp_path):
    first = discover(cfg_for(root, holdout=0.2))  # a fraction: 2 of 10 per class
    again = discover(cfg_for(root, holdout=0.2, index_cache=str(tmp_path / "another_cache")))
    assert first.holdout == again.holdout and len(first.holdout) == 6  # another rank, a resume
    assert discover(cfg_for(root, holdout=0.2, holdout_seed=1)).holdout != first.holdout
    # a class that gains images does not change which images of the other classes are held out
    before = discover(cfg_for(root, holdout=2)).holdout
    write_class_folders(root / "train", WNIDS[:1], per_class=14, seed=900)
    grown = discover(cfg_for(root, holdout=2, index_cache=str(tmp_path / "third_cache"))).holdout
    assert len(grown) == 6 and [s for s in grown if s[1] > 0] == [s for s in before if s[1] > 0]


def test_split_holdout_by_hand():
    samples = [(f"/d/c{c}/{k}.jpg", c) for c in range(2) for k in range(5)]
    train, held = split_holdout(samples, ["a", "b"], 2, seed=0)
    assert len(held) == 4 and [lab for _, lab in held].count(0) == 2
    assert sorted(train + held) == sorted(samples)
    assert train == [s for s in samples if s not in held]  # the samples' order kept
    assert split_holdout(samples, ["a", "b"], 0) == (samples, [])
    assert holdout_count(0.25, 8) == 2 and holdout_count(0.01, 8) == 1 and holdout_count(3, 8) == 3
    with pytest.raises(DataError, match="class 'a' has 5 training images"):
        split_holdout(samples, ["a", "b"], 5)


@pytest.mark.parametrize("value", ["-1", "2.5", "true"])
def test_a_bad_holdout_is_one_config_error(value):
    with pytest.raises(ConfigError, match="holdout"):
        load_config(None, [f"data.holdout={value}"])
