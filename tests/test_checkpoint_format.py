"""verydeep.checkpoint: the one module for checkpoint files. The layout (training state under
``train``), files of verydeep 0.1 still loading, metadata checked before trust, non-finite
weights refused, reproduce reading through it, evaluation independent of train/."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.evaluate.conftest import CLASSES, tiny_net, write_dataset
from tests.test_package_structure import module_graph
from verydeep import checkpoint
from verydeep.checkpoint import FILE_DIGEST_KEY, META_KEY, file_sha256, load, save, save_weights
from verydeep.cli.main import main
from verydeep.config import Config, config_to_dict
from verydeep.errors import EXIT_CHECKPOINT, CheckpointError
from verydeep.evaluate import load_eval_net
from verydeep.models import vgg as vgg_module
from verydeep.train.checkpoint import load_training_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "old_layout.json").read_text())
TINY_DATA = {"scale_min": 32, "scale_max": 48, "crop_size": 32, "normalize": "mean_std"}


def _run_checkpoint(path, model=None, data=None):
    """A checkpoint as a training run writes it (weights, spec, config with its data section, classes)."""
    model = model or tiny_net()
    cfg = config_to_dict(Config())
    cfg["data"].update(data or TINY_DATA)
    return save(path, model.state_dict(), spec=model.spec.to_dict(), config=cfg, classes=CLASSES,
                class_names={c: c.upper() for c in CLASSES})


# ----------------------------------------------------------------------------- the layout


def test_old_flat_layout_loads_to_the_same_weights_spec_classes_and_state():
    ckpt = load(FIXTURES / "old_layout.pt")
    assert file_sha256(ckpt.weights) == EXPECTED["weights_sha256"]
    assert file_sha256(ckpt.ema) == EXPECTED["ema_sha256"]
    assert ckpt.spec == EXPECTED["spec"] and ckpt.classes == EXPECTED["classes"]
    assert ckpt.class_names == EXPECTED["class_names"]
    assert ckpt.finished is EXPECTED["finished"] is False
    resumed = load_training_checkpoint(FIXTURES / "old_layout.pt")
    assert resumed.state.state_dict() == EXPECTED["state"]
    assert resumed.metrics_bytes == EXPECTED["metrics_bytes"] and resumed.ema_updates == EXPECTED["ema_updates"]
    assert resumed.parallel_mode == EXPECTED["parallel_mode"] and resumed.schedule == EXPECTED["schedule"]
    assert ckpt.train["world_size"] == EXPECTED["world_size"] and set(resumed.rng) >= {"python", "numpy", "torch"}
    net = load_eval_net(FIXTURES / "old_layout.pt")
    assert net.classes == EXPECTED["classes"] and net.data.crop_size == EXPECTED["preprocessing"]["crop_size"]


def test_old_export_loads_with_its_preprocessing():
    net = load_eval_net(FIXTURES / "old_export.safetensors")
    assert file_sha256(net.model.state_dict()) == EXPECTED["export_weights_sha256"]
    assert {k: getattr(net.data, k) for k in EXPECTED["preprocessing"]} == EXPECTED["preprocessing"]
    assert net.classes == EXPECTED["classes"]


def test_the_training_state_is_nested_under_one_key(tmp_path):
    resumed = load_training_checkpoint(FIXTURES / "old_layout.pt")
    from verydeep.train.schedules import LRSchedule
    from verydeep.train.checkpoint import save_training_checkpoint

    cfg = Config()
    model = vgg_module.VGG(vgg_module.VGGSpec(**EXPECTED["spec"]))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    path = save_training_checkpoint(tmp_path / "last.pt", resumed.state, weights=resumed.weights,
                                    spec=model.spec, cfg=cfg, classes=EXPECTED["classes"], class_names={},
                                    optimizer=opt, schedule=LRSchedule(cfg.schedule, 0.01, 10, 2),
                                    scaler=torch.amp.GradScaler("cpu", enabled=False), world_size=1,
                                    parallel_mode="data_parallel", metrics_bytes=7)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "ema", "spec", "config", "classes", "class_names", "train"}
    assert raw["train"]["step"] == 7 and raw["train"]["metrics_bytes"] == 7
    again = load_training_checkpoint(path)
    assert again.state.state_dict() == EXPECTED["state"] and file_sha256(again.weights) == EXPECTED["weights_sha256"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- metadata checked before trust


def _exported(tmp_path, name="net.safetensors", **meta_changes):
    """An exported file whose metadata is changed after export, its digest made to match again
    (as someone who edits it on purpose would)."""
    model = tiny_net()
    meta = {"spec": model.spec.to_dict(), "classes": CLASSES, "class_names": {},
            "preprocessing": {"normalize": "mean_std", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                              "crop_size": 32, "scale_min": 32, "scale_max": 32}}
    for key, value in meta_changes.items():
        section, _, field = key.partition("__")
        meta[section][field] = value
    text = json.dumps(meta)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / name
    save_file(state, str(path), metadata={META_KEY: text, FILE_DIGEST_KEY: file_sha256(state, text)})
    return path


def test_metadata_changed_after_export_fails_the_checksum(tmp_path):
    path = save_weights(tiny_net(), tmp_path / "net.safetensors", classes=CLASSES,
                        preprocessing={"normalize": "mean_std", "mean": [0.5] * 3, "std": [0.25] * 3})
    raw = path.read_bytes()
    edited = raw.replace(b"0.5, 0.5, 0.5", b"0.6, 0.5, 0.5", 1)  # the same length: a valid header
    assert edited != raw
    path.write_bytes(edited)
    with pytest.raises(CheckpointError, match="do not match the SHA-256"):
        load(path)


@pytest.mark.parametrize("key, value, named", [
    ("preprocessing__mean", [float("nan"), 0.5, 0.5], "preprocessing.mean"),
    ("preprocessing__std", [0.25, 0.0, 0.25], "preprocessing.std"),
    ("preprocessing__normalize", "bgr", "preprocessing.normalize"),
    ("preprocessing__crop_size", "32", "preprocessing.crop_size"),
    ("spec__width", float("inf"), "spec.width"),
    ("spec__num_classes", 3.5, "spec.num_classes"),
    ("spec__batch_norm", "yes", "spec.batch_norm"),
    ("spec__dropout", 2.0, "spec.dropout"),
    ("spec__evil", 1, "spec.evil"),
])
def test_bad_metadata_is_one_line_naming_the_key(tmp_path, key, value, named):
    path = _exported(tmp_path, **{key: value})
    with pytest.raises(CheckpointError, match=rf"{path}: {named}="):
        load(path)


def test_a_nan_mean_in_a_training_checkpoints_config_is_refused(tmp_path, capsys):
    path = _run_checkpoint(tmp_path / "run" / "best.pt", data={**TINY_DATA, "mean": [0.5, float("nan"), 0.5]})
    assert main(["predict", "--checkpoint", str(path), str(tmp_path / "any.JPEG")]) == EXIT_CHECKPOINT
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{path}: config.data.mean=" in last


def test_a_spec_that_does_not_fit_its_tensors_builds_nothing(tmp_path, monkeypatch):
    """A spec of width 64 would be a net of terabytes: its shapes are compared on the meta
    device, and no net is built on a real device."""
    paths = [_exported(tmp_path, name=f"w{width}.safetensors", spec__width=width) for width in (64.0, 1 / 8)]
    good = _exported(tmp_path)
    built_on = []
    real_init = vgg_module.VGG.__init__

    def spy(self, spec):
        built_on.append(torch.empty(0).device.type)  # the default device the net is built on
        real_init(self, spec)

    monkeypatch.setattr(vgg_module.VGG, "__init__", spy)
    for path in paths:
        with pytest.raises(CheckpointError, match=r"weights do not fit .*: classifier.0.weight has shape \[16, 32\], "
                                                  r"the spec needs"):
            load_eval_net(path)
    assert built_on == ["meta", "meta"]
    load_eval_net(good)
    assert built_on[2:] == ["meta", "cpu"]  # checked first, then built


# ----------------------------------------------------------------------------- non-finite weights


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    d = tmp_path_factory.mktemp("diverged")
    model = tiny_net()
    with torch.no_grad():
        model.classifier[3].weight[0, 0] = float("nan")
        model.classifier[6].bias[1] = float("inf")
    run = d / "run"
    _run_checkpoint(run / "best.pt", model)
    return {"run": run, "data": write_dataset(d / "data"), "out": d}


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_eval_predict_and_export_refuse_non_finite_weights_in_one_line(diverged, command, capsys):
    image = next((diverged["data"] / "val").rglob("*.JPEG"))
    argv = {"eval": ["eval", "--checkpoint", str(diverged["run"]), "--data", str(diverged["data"]),
                     "--protocol", "center", "--scales", "32"],
            "predict": ["predict", "--checkpoint", str(diverged["run"]), str(image)],
            "export": ["export", "--checkpoint", str(diverged["run"]), "--out", str(diverged["out"] / "x"),
                       "--format", "safetensors"]}[command]
    assert main(argv) == EXIT_CHECKPOINT
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "nan%" not in err
    last = err.splitlines()[-1]
    assert last == (f"verydeep: error: {diverged['run'] / 'best.pt'}: weight classifier.3.weight holds NaN or inf "
                    f"values (the run diverged before this was written): use an earlier checkpoint, or train "
                    f"again with a lower optim.lr")


def test_resume_refuses_non_finite_weights_and_inspection_can_read_them(diverged):
    with pytest.raises(CheckpointError, match="classifier.3.weight holds NaN"):
        load_training_checkpoint(diverged["run"] / "best.pt")
    assert not torch.isfinite(load(diverged["run"], finite=False).weights["classifier.6.bias"]).all()


# ----------------------------------------------------------------------------- reproduce reads through it


def test_reproduce_status_and_dry_run_read_last_pt_through_the_checked_loader(tmp_path, capsys):
    from verydeep.reproduce.chain import INTERRUPTED, run_status

    run = tmp_path / "runs" / "paper_A_S256"
    _run_checkpoint(run / "last.pt")
    assert run_status(run) == INTERRUPTED
    data = bytearray((run / "last.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (run / "last.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="last.pt"):
        run_status(run)
    assert main(["reproduce", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--profile",
                 "mini", "--dry-run"]) == EXIT_CHECKPOINT
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and str(run / "last.pt") in err.splitlines()[-1]


# ----------------------------------------------------------------------------- one module


def test_evaluation_and_models_import_nothing_from_train():
    edges, _ = module_graph()
    for module, targets in edges.items():
        if module.startswith(("verydeep.evaluate", "verydeep.models", "verydeep.checkpoint")):
            assert not [t for t in targets if t.startswith("verydeep.train")], module


def test_one_resolver_and_no_which_parameter():
    import inspect

    assert "which" not in inspect.signature(load_eval_net).parameters
    assert not hasattr(checkpoint, "find_checkpoint") and not hasattr(checkpoint, "weights_file")
    from verydeep.models import weights

    assert not hasattr(weights, "weights_file") and not hasattr(weights, "read_weights")


def test_exported_weights_are_written_atomically_with_the_umasks_mode(tmp_path):
    path = save_weights(tiny_net(), tmp_path / "net.safetensors")
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["net.safetensors"]
