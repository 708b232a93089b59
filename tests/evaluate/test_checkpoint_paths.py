"""A checkpoint supplies the net, its classes and its preprocessing, never paths: evaluation
reads the data the command line names and writes only where local defaults say."""

import dataclasses
import os
import shutil

import torch

from tests.evaluate.conftest import CLASSES, tiny_net, write_dataset
from tests.evaluate.test_evaluator import data_cfg
from verydeep.cli.main import main
from verydeep.config import Config, config_to_dict
from verydeep.errors import EXIT_DATA, EXIT_USAGE
from verydeep.evaluate import load_eval_net


def _save_run(run_dir, data):
    run_dir.mkdir(parents=True, exist_ok=True)
    model = tiny_net()
    torch.save({"model": model.state_dict(), "spec": model.spec.to_dict(), "config": config_to_dict(Config(data=data)),
                "classes": CLASSES, "class_names": {}}, run_dir / "best.pt")
    return run_dir


def test_stored_data_paths_neither_choose_the_data_nor_where_files_go(dataset, tmp_path, capsys):
    other = write_dataset(tmp_path / "other", per_class=(1, 1, 1))  # 3 val images; the given one has 7
    evil = tmp_path / "chosen_by_the_checkpoint"
    stored = data_cfg(other, val_dir=str(other / "val"), val_labels=str(other / "labels.csv"),
                      index_cache=str(evil / "cache"), synset_names=str(evil / "names.txt"))
    run = _save_run(tmp_path / "run", stored)
    net = load_eval_net(run)
    assert all(getattr(net.data, k) is None for k in ("root", "val_dir", "val_labels", "index_cache", "synset_names"))
    assert main(["eval", "--checkpoint", str(run), "--data", str(dataset), "--protocol", "center",
                 "--scales", "48"]) == 0
    assert f"7 images of {dataset}" in capsys.readouterr().out  # the given folder's, not the stored val_dir's
    assert not evil.exists()


def test_eval_needs_data_and_says_so_from_any_folder(dataset, tmp_path, capsys, monkeypatch):
    # The run stored a relative data root, as `verydeep demo` from the checkout does.
    run = _save_run(tmp_path / "run", dataclasses.replace(data_cfg(dataset), root="data/demo"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", "--checkpoint", str(run)]) == EXIT_USAGE
    assert "--data DIR" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["eval", "--checkpoint", str(run), "--data", "data/demo"]) == EXIT_DATA
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--data data/demo: not a folder" in last and str(elsewhere) in last
    assert main(["eval", "--checkpoint", str(run), "--data", str(dataset), "--protocol", "center",
                 "--scales", "48"]) == 0


def test_a_folder_with_only_val_and_its_labels_uses_the_checkpoints_classes(dataset, tmp_path, capsys):
    run = _save_run(tmp_path / "run", data_cfg(dataset))
    flat = tmp_path / "val_only"
    (flat / "val").mkdir(parents=True)
    rows = ["ImageId,PredictionString"]
    for k, path in enumerate(sorted((dataset / "val").rglob("*.JPEG")), 1):
        name = f"ILSVRC2012_val_{k:08d}"
        shutil.copy(path, flat / "val" / f"{name}.JPEG")
        rows.append(f"{name},{path.parent.name} 1 2 3 4")
    (flat / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")  # no train/, no synset list
    assert not (flat / "train").exists() and not os.path.exists(flat / "LOC_synset_mapping.txt")
    assert main(["eval", "--checkpoint", str(run), "--data", str(flat), "--protocol", "center",
                 "--scales", "48"]) == 0
    assert f"7 images of {flat}" in capsys.readouterr().out
