import json

import pytest
import torch

from tests.evaluate.conftest import CLASSES, tiny_net
from tests.evaluate.test_evaluator import data_cfg
from verydeep.cli.main import main

NAMES = {c: f"class {c[-1]} name" for c in CLASSES}


def save_run(run_dir, model, cfg, classes, names):
    """A checkpoint as training writes it: weights, spec, resolved config, classes."""
    from verydeep.config import Config, config_to_dict

    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "spec": model.spec.to_dict(),
                "config": config_to_dict(Config(data=cfg)), "classes": classes, "class_names": names,
                "step": 10}, run_dir / "best.pt")
    return run_dir


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):
    # Jittered S in [32, 64]: single-scale Q=48, multi-scale Q=32, 48, 64.
    return save_run(tmp_path_factory.mktemp("run"), tiny_net(), data_cfg(dataset), CLASSES, NAMES)


def test_eval_prints_the_table_and_writes_json(run_dir, dataset, tmp_path, capsys):
    out = tmp_path / "rows.json"
    rc = main(["eval", "--checkpoint", str(run_dir), "--data", str(dataset), "--protocol", "all",
               "--scales", "single", "--scales", "multi", "--batch-size", "4", "--json", str(out),
               "--per-class", str(tmp_path / "cls.csv"), "--device", "cpu"])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [(r["protocol"], r["scales"]) for r in rows] == [
        (p, s) for s in ([48], [32, 48, 64]) for p in ("center", "dense", "multicrop", "dense+multicrop")]
    assert all(r["images"] == 7 for r in rows)
    text = capsys.readouterr().out
    assert "top-1 err" in text and "32,48,64" in text
    assert "class 0 name" in (tmp_path / "cls.csv").read_text()


def test_eval_fuses_two_checkpoints(run_dir, dataset, tmp_path):
    other = save_run(tmp_path / "other", tiny_net(5), data_cfg(dataset), CLASSES, NAMES)
    out = tmp_path / "rows.json"
    assert main(["eval", "--checkpoint", str(run_dir), "--checkpoint", str(other / "best.pt"),
                 "--protocol", "dense", "--scales", "48", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert len(row["nets"]) == 2 and row["images"] == 7


def test_predict_prints_top5_with_names(dataset, tmp_path, capsys):
    classes = [f"n{c:08d}" for c in range(7)]
    names = {c: f"thing number {i}" for i, c in enumerate(classes)}
    run = save_run(tmp_path / "run7", tiny_net(6, classes=7), data_cfg(dataset), classes, names)
    images = sorted((dataset / "val").rglob("*.JPEG"))[:2]
    assert main(["predict", "--checkpoint", str(run), *map(str, images)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(str(images[0])) and "dense" in lines[0]
    ranks = [line for line in lines if line.strip()[:2] in {f"{i}." for i in range(1, 6)}]
    assert len(ranks) == 10 and all("thing number" in line for line in ranks)
    assert main(["predict", "--checkpoint", str(run), "--json", "--protocol", "multicrop", str(images[0])]) == 0
    (res,) = json.loads(capsys.readouterr().out)
    assert len(res["top"]) == 5 and res["protocol"] == "multicrop"
    assert sum(t["prob"] for t in res["top"]) <= 1 + 1e-6
    assert res["top"] == sorted(res["top"], key=lambda t: -t["prob"])
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "missing.jpg")]) == 1
    capsys.readouterr()
    # fp32 is what auto means on CPU; bf16 autocast moves the posteriors a little.
    args = ["predict", "--checkpoint", str(run), "--json", "--device", "cpu", str(images[0])]
    probs = {}
    for amp in ("auto", "none", "bf16"):
        assert main([*args, "--amp", amp]) == 0
        probs[amp] = [t["prob"] for t in json.loads(capsys.readouterr().out)[0]["top"]]
    assert probs["none"] == probs["auto"] and probs["bf16"] != probs["auto"]


def test_export_command_writes_all_files(run_dir, tmp_path):
    prefix = tmp_path / "exp" / "tiny"
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(prefix)]) == 0
    for suffix in (".classifier.onnx", ".dense.onnx", ".safetensors"):
        assert (tmp_path / "exp" / f"tiny{suffix}").is_file()
    # The exported safetensors loads back as a checkpoint with its classes and preprocessing.
    from verydeep.evaluate import load_eval_net

    net = load_eval_net(f"{prefix}.safetensors")
    assert net.classes == CLASSES and net.data.crop_size == 32 and net.class_names == NAMES
