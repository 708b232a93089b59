"""Posterior stores on disk: every malformed store is one line and exit 4 from ``verydeep fuse``;
eval's output paths are refused before any work (exit 7)."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest

from tests.evaluate.conftest import CLASSES, tiny_net
from tests.evaluate.test_cli import NAMES, save_run
from tests.evaluate.test_evaluator import data_cfg, val_samples
from verydeep.cli.main import main
from verydeep.evaluate import EvalOptions, RowSpec, evaluate_rows

pytestmark = pytest.mark.usefixtures("no_grad")
ENTRY = "net0-center-Q40.npy"


@pytest.fixture(scope="module")
def good_store(dataset, tmp_path_factory):
    cfg = data_cfg(dataset)
    samples, classes = val_samples(cfg)
    folder = tmp_path_factory.mktemp("stores") / "good"
    evaluate_rows(tiny_net(12), cfg, samples, [RowSpec("center", (40,))], classes=classes,
                  options=EvalOptions(progress=False), save_posteriors=folder)
    return folder


def edit_index(store, **changes):
    index = json.loads((store / "index.json").read_text())
    index.update(changes)
    (store / "index.json").write_text(json.dumps(index))


def fuse_fails(capsys, *stores) -> str:
    """``verydeep fuse`` on ``stores``: exit 4 and one line on stderr, returned."""
    capsys.readouterr()
    assert main(["fuse", *map(str, stores)]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("verydeep: error: "), err
    return err[0]


def test_a_good_store_fuses(good_store, tmp_path, capsys):
    assert main(["fuse", str(good_store)]) == 0
    assert "1 posteriors fused" in capsys.readouterr().out
    assert main(["fuse", str(good_store), "--json", str(tmp_path)]) == 7  # a folder where the file should be
    assert capsys.readouterr().err.count("\n") == 1


def index_faults():
    """(name, change to the index, words the line must hold)."""
    return [
        ("format", {"format": "other/1"}, "not a posterior store index"),
        ("negative images", {"images": -7}, "positive integers"),
        ("dtype", {"dtype": "object"}, "dtype one of"),
        ("classes too few", {"classes": CLASSES[:2]}, "3 distinct class ids"),
        ("classes repeated", {"classes": [CLASSES[0]] * 3}, "3 distinct class ids"),
        ("label 99", {"labels": [99] * 7}, "label 99 of"),
        ("label -5", {"labels": [-5] * 7}, "label -5 of"),
        ("labels as text", {"labels": ["0"] * 7}, "labels must be a list of integers"),
        ("labels too few", {"labels": [0]}, "1 labels for 7 images"),
        ("samples", {"samples": [1, 2]}, "7 image paths"),
        ("undecodable", {"undecodable": [70]}, "undecodable lists an image"),
        ("entry file", {"entries": {"net0-center-Q40": {"net": 0, "method": "center", "scale": 40,
                                                        "file": "../../etc/passwd"}}}, "is malformed"),
        ("entry method", {"entries": {"net0-center-Q40": {"net": 0, "method": "rm", "scale": 40,
                                                          "file": ENTRY}}}, "is malformed"),
        ("row names no entry", {"rows": [{"row": {"protocol": "center", "scales": [40]}, "nets": [["nope"]]}]},
         "row #0 is malformed"),
    ]


@pytest.mark.parametrize("name,change,words", index_faults(), ids=[f[0] for f in index_faults()])
def test_a_malformed_index_is_one_line(good_store, tmp_path, capsys, name, change, words):
    store = tmp_path / "store"
    shutil.copytree(good_store, store)
    edit_index(store, **change)
    line = fuse_fails(capsys, store)
    assert words in line and str(store) in line


def array_faults(store):
    """Entry files that are not the plain [7, 3] float32 arrays the index names."""
    path = store / ENTRY
    yield "missing", lambda: path.unlink(), "not a stored posterior array"
    yield "truncated", lambda: path.write_bytes(path.read_bytes()[:100]), "not a stored posterior array"
    yield "not npy", lambda: path.write_bytes(b"<html>not found</html>"), "not a stored posterior array"
    yield "pickle", lambda: path.write_bytes(pickle.dumps({"x": 1})), "not a stored posterior array"
    yield "object array", lambda: np.save(path, np.array([{"x": 1}] * 21, dtype=object).reshape(7, 3),
                                          allow_pickle=True), "not a stored posterior array"
    yield "shape", lambda: np.save(path, np.zeros((7, 4), np.float32)), "holds float32 (7, 4)"
    yield "dtype", lambda: np.save(path, np.zeros((7, 3), np.float64)), "holds float64 (7, 3)"
    yield "a folder", lambda: (path.unlink(), path.mkdir()), "not a stored posterior array"


@pytest.mark.parametrize("fault", range(8))
def test_a_malformed_array_is_one_line(good_store, tmp_path, capsys, fault):
    store = tmp_path / "store"
    shutil.copytree(good_store, store)
    name, damage, words = list(array_faults(store))[fault]
    damage()
    line = fuse_fails(capsys, store)
    assert words in line, name


def test_non_finite_posteriors_are_refused_naming_the_entry(good_store, tmp_path, capsys):
    for bad in (np.nan, np.inf):
        store = tmp_path / f"store-{bad}"
        shutil.copytree(good_store, store)
        array = np.load(store / ENTRY)
        array[5, 1] = bad
        np.save(store / ENTRY, array)
        line = fuse_fails(capsys, store)
        assert "non-finite posteriors" in line and ENTRY in line and "net0-center-Q40" in line


def test_what_is_not_a_store_is_one_line(good_store, tmp_path, capsys):
    assert "no such folder" in fuse_fails(capsys, tmp_path / "missing")
    old = tmp_path / "old.safetensors"  # a file of the former format, or anything else
    old.write_bytes(pickle.dumps([1, 2, 3]))
    assert "a file" in fuse_fails(capsys, old)
    (tmp_path / "empty").mkdir()
    assert "no index.json" in fuse_fails(capsys, tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(good_store, broken)
    (broken / "index.json").write_text("{not json")
    assert "unreadable" in fuse_fails(capsys, broken)
    (broken / "index.json").write_text("[1, 2]")
    assert "not a posterior store index" in fuse_fails(capsys, broken)
    assert "no row #3" in fuse_fails(capsys, f"{good_store}#3")


def test_stores_of_other_images_or_classes_are_refused(good_store, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(good_store, other)
    index = json.loads((other / "index.json").read_text())
    edit_index(other, samples=["elsewhere.jpg", *index["samples"][1:]])
    assert "hold different images" in fuse_fails(capsys, good_store, other)
    edit_index(other, samples=index["samples"], classes=["n1", "n2", "n3"])
    assert "classes differ" in fuse_fails(capsys, good_store, other)


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):
    return save_run(tmp_path_factory.mktemp("run"), tiny_net(), data_cfg(dataset), CLASSES, NAMES)


def test_eval_output_paths_are_refused_before_any_work(run_dir, dataset, tmp_path, capsys, monkeypatch):
    import verydeep.evaluate as evaluate

    def never(*args, **kwargs):
        raise AssertionError("the evaluation started")

    monkeypatch.setattr(evaluate, "evaluate_rows", never)
    a_file = tmp_path / "file"
    a_file.write_text("")
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "notes.txt").write_text("mine")
    base = ["eval", "--checkpoint", str(run_dir), "--data", str(dataset), "--device", "cpu"]
    cases = [(["--save-posteriors", str(a_file)], "a file, not a folder"),
             (["--save-posteriors", str(a_file / "sub")], "cannot write stored posteriors"),
             (["--save-posteriors", str(crowded)], "holding other files"),
             (["--json", str(tmp_path)], "a folder, not a file"),
             (["--json", str(a_file / "x.json")], "a file stands where its folder should be")]
    if os.geteuid() != 0:  # root writes through permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases += [(["--save-posteriors", str(locked / "store")], "ermission denied"),
                  (["--json", str(locked / "x.json")], "ermission denied")]
    if os.path.isdir("/sys") and not os.access("/sys", os.W_OK):  # sysfs: refused even to root
        cases += [(["--save-posteriors", "/sys/verydeep-store"], "cannot write")]
    for extra, words in cases:
        capsys.readouterr()
        assert main([*base, *extra]) == 7, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (extra, err)
    assert (crowded / "notes.txt").read_text() == "mine"
    assert main([*base, "--posteriors-dtype", "float64"]) == 2


def test_eval_replaces_an_earlier_store(run_dir, dataset, tmp_path, capsys):
    store = tmp_path / "store"
    base = ["eval", "--checkpoint", str(run_dir), "--data", str(dataset), "--device", "cpu", "--protocol", "center",
            "--save-posteriors", str(store)]
    assert main([*base, "--scales", "40"]) == 0
    assert main([*base, "--scales", "48", "--posteriors-dtype", "float16"]) == 0
    assert sorted(p.name for p in store.iterdir()) == ["index.json", "net0-center-Q48.npy"]
    assert np.load(store / "net0-center-Q48.npy").dtype == np.float16
    assert main(["fuse", str(store)]) == 0
