"""Bad inputs found by bench/hostile_inputs.py that ended in a traceback, a wrong exit code, a
last line that named nothing, or a silent acceptance; each test failed before its fix."""

import json

import pytest

from tests.evaluate.conftest import CLASSES, tiny_net
from tests.evaluate.test_cli import run_dir  # noqa: F401 - the module's run fixture
from verydeep import checkpoint as ck
from verydeep.cli.main import main
from verydeep.errors import EXIT_DATA, EXIT_IO, EXIT_USAGE


def last_err(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("flag", ["--per-image", "--per-class"])
def test_eval_csv_onto_a_folder_is_refused_before_the_work_with_the_io_code(run_dir, dataset, tmp_path, flag,  # noqa: F811
                                                                           capsys):
    rc = main(["eval", "--checkpoint", str(run_dir), "--data", str(dataset), "--protocol", "center",
               "--scales", "48", "--device", "cpu", flag, str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == EXIT_IO and f"{flag} {tmp_path}" in err.splitlines()[-1]
    assert "loaded" not in err  # refused before the net was loaded


def test_predict_json_onto_a_folder_is_the_io_code(run_dir, dataset, tmp_path, capsys):  # noqa: F811
    image = sorted((dataset / "val").rglob("*.JPEG"))[0]
    rc = main(["predict", "--checkpoint", str(run_dir), "--json", str(tmp_path), str(image)])
    assert rc == EXIT_IO and str(tmp_path) in last_err(capsys)


def test_predict_unreadable_image_ends_stderr_with_a_line_naming_it(run_dir, tmp_path, capsys):  # noqa: F811
    page = tmp_path / "page.jpg"
    page.write_text("<html>404</html>")
    assert main(["predict", "--checkpoint", str(run_dir), str(page)]) == EXIT_DATA
    line = last_err(capsys)
    assert line.startswith("verydeep: error: 1 of 1 images") and "page.jpg" in line


def test_eval_of_a_folder_without_images_is_the_data_code_naming_it(run_dir, tmp_path, capsys):  # noqa: F811
    (tmp_path / "empty").mkdir()
    rc = main(["eval", "--checkpoint", str(run_dir), "--data", str(tmp_path / "empty"), "--protocol", "center",
               "--scales", "48", "--device", "cpu"])
    assert rc == EXIT_DATA and str(tmp_path / "empty") in last_err(capsys)


def test_eval_refuses_a_negative_crop_batch(run_dir, dataset, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as e:
        main(["eval", "--checkpoint", str(run_dir), "--data", str(dataset), "--crop-batch", "-4"])
    assert e.value.code == EXIT_USAGE and "-4" in last_err(capsys)


def test_a_text_file_named_pt_is_a_checkpoint_error_naming_it(tmp_path):
    path = tmp_path / "text.pt"
    path.write_bytes(b"hello, I am not a checkpoint\n")
    with pytest.raises(ck.CheckpointError, match="text.pt"):
        ck.load(path)


def test_integer_weights_are_refused_not_truncated(tmp_path):
    model = tiny_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first].long()
    path = ck.save(tmp_path / "int.safetensors", state, spec=model.spec.to_dict(), classes=CLASSES)
    with pytest.raises(ck.CheckpointError, match=f"{first} is torch.int64"):
        ck.build_model(ck.load(path))


def test_duplicated_class_ids_in_metadata_are_a_checkpoint_error(tmp_path):
    model = tiny_net()
    path = ck.save(tmp_path / "dup.safetensors", model.state_dict(), spec=model.spec.to_dict(),
                   classes=[CLASSES[0], CLASSES[0], CLASSES[1]])
    with pytest.raises(ck.CheckpointError, match="distinct class ids"):
        ck.load(path)


def test_pretrained_file_whose_spec_does_not_describe_its_tensors_is_refused(tmp_path):
    from verydeep.train.pretrained import load_pretrained

    model = tiny_net()
    spec = {**model.spec.to_dict(), "width": 2.0}  # metadata that lies about the tensors
    path = ck.save(tmp_path / "forged.safetensors", model.state_dict(), spec=spec, classes=CLASSES)
    with pytest.raises(ck.CheckpointError, match="forged.safetensors: weights do not fit"):
        load_pretrained(tiny_net(1), ck.load(path), str(path), classes=CLASSES)


def test_reproduce_refuses_a_non_positive_throughput_and_names_a_damaged_bench_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--dry-run", "--images-per-s", "-5"])
    assert e.value.code == EXIT_USAGE and "-5" in last_err(capsys)
    bad = tmp_path / "bench.json"
    bad.write_text("model: [unclosed\n")
    from verydeep.reproduce.estimate import throughput_from_bench

    with pytest.raises(ValueError, match="bench.json: not a bench JSON file"):
        throughput_from_bench(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="bench.json: not a bench JSON file"):
        throughput_from_bench(bad)


def test_reproduce_dry_run_refuses_an_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    rc = main(["reproduce", "--data", str(tmp_path), "--out", str(tmp_path / "a_file"), "--profile", "mini",
               "--dry-run"])
    assert rc == EXIT_IO and "a_file" in last_err(capsys)


@pytest.mark.parametrize("key, value, named", [("optim.momentum", "-0.5", "momentum"),
                                               ("train.max_iterations", "-5", "max_iterations"),
                                               ("model.width", "1e9", "width")])
def test_config_values_out_of_range_are_refused(key, value, named):
    from verydeep.config import load_config

    with pytest.raises(ValueError, match=named):
        load_config("demo", [f"{key}={value}"])


def test_a_recipe_that_is_not_text_is_named(tmp_path):
    from verydeep.config import ConfigError, load_config

    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="binary.yaml: not a text file"):
        load_config(str(path))

