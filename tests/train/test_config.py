import dataclasses
from pathlib import Path

import pytest
import yaml

from verydeep.config import ConfigError, config_from_dict, config_to_dict, find_recipe, list_recipes, load_config, save_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "verydeep" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_recipe_loads(path):
    cfg = load_config(path)
    assert cfg.description, f"{path.name} must say which paper setting it is"


def test_recipes_exist_for_every_paper_setting():
    names = {p.stem for p in CONFIGS}
    for required in ["paper_A_S256", "paper_B_S256", "paper_D_S256", "paper_D_S384",
                     "paper_D_multiscale", "glorot_D_S256", "notebook_vgg16", "demo"]:
        assert required in names


def test_recipes_are_found_by_name_through_the_package(tmp_path, monkeypatch):
    import importlib.resources

    monkeypatch.chdir(tmp_path)  # nowhere near the checkout
    packaged = importlib.resources.files("verydeep.recipes")
    assert {p.stem for p in CONFIGS} == set(list_recipes())
    assert find_recipe("paper_A_S256") == packaged / "paper_A_S256.yaml"
    assert find_recipe("paper_A_S256.yaml") == packaged / "paper_A_S256.yaml"
    assert load_config("paper_A_S256").model.name == "A"
    assert list_recipes()["paper_A_S256"].startswith("Net A (11 weight layers)")
    own = tmp_path / "paper_A_S256.yaml"  # a file of the same name wins: a path is a path
    own.write_text("model:\n  name: E\n")
    assert load_config("paper_A_S256.yaml").model.name == "E"
    with pytest.raises(ConfigError, match="packaged: .*paper_D_S256"):
        load_config("paper_Z_S256")


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'optim\.lrr'"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"'modle'"):
        load_config(None, ["modle.name=vgg11"])


@pytest.mark.parametrize("override,key", [
    ("optim.lr=fast", "optim.lr"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.compile=maybe", "train.compile"),
    ("schedule.milestones=3", "schedule.milestones"),
    ("train.batch_size=true", "train.batch_size"),
])
def test_wrong_types_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_invalid_values_are_named():
    with pytest.raises(ConfigError, match="optimiser 'rmsprop'"):
        load_config(None, ["optim.name=rmsprop"])


def test_overrides_and_roundtrip(tmp_path):
    cfg = load_config(None, ["optim.lr=1e-3", "optim.name=adamw", "model.width=0.125",
                             "schedule.milestones=[2, 4]", "model.num_classes=null"])
    assert cfg.optim.lr == 0.001 and cfg.optim.name == "adamw" and cfg.model.width == 0.125
    assert cfg.schedule.milestones == [2, 4]
    save_config(cfg, tmp_path / "c.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert config_to_dict(again) == config_to_dict(cfg)


def test_int_accepted_for_float():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


@pytest.mark.parametrize("override,message", [
    ("data.crop_size=100000", "crop_size=100000 must be an integer from 1 to 4096"),
    ("data.eval_scale=99999999", "eval_scale=99999999 must be an integer from 1 to 4096"),
    ("data.scale_max=5000", "scale_max=5000 must be an integer from 1 to 4096"),
    ("data.crop_size=0", "crop_size=0 must be an integer from 1 to 4096"),
    ("optim.lr=.inf", "lr must be a finite number > 0, got inf"),
    ("optim.lr=inf", "lr must be a finite number > 0, got inf"),
    ("optim.lr=nan", "lr must be a finite number > 0, got nan"),
    ("optim.weight_decay=-1", "weight_decay must be a finite number >= 0, got -1.0"),
    ("optim.weight_decay=.nan", "weight_decay must be a finite number >= 0, got nan"),
    ("data.mean=[0.5, .nan, 0.5]", "mean must be finite numbers"),
])
def test_out_of_range_values_are_refused_by_their_section(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize("flags,message", [
    (["--set", "data.crop_size=100000"], "data: crop_size=100000 must be an integer from 1 to 4096"),
    (["--set", "optim.weight_decay=-1"], "optim: weight_decay must be a finite number >= 0, got -1.0"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
])
def test_out_of_range_values_are_one_line_and_exit_2_on_the_command_line(flags, message, tmp_path, capsys):
    from verydeep.cli.main import main

    argv = ["train", "--config", "demo", *flags, "--out", str(tmp_path / "run")]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own refusal of a flag's value
        rc = e.code
    assert rc == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_recipe_names_cannot_leave_the_recipes(tmp_path, monkeypatch, capsys):
    from verydeep.cli.main import main

    secret = tmp_path / "secret.txt"
    secret.write_text("do not print me\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for name in ("../secret.txt", str(secret), "../../../etc/passwd"):
        assert main(["recipes", name]) == 2
        captured = capsys.readouterr()
        assert "do not print me" not in captured.out and "root:" not in captured.out
        assert f"no packaged recipe named {name!r}" in captured.err
    assert main(["recipes", "paper_A_S256"]) == 0
    assert "model:" in capsys.readouterr().out


def test_an_empty_recipe_says_that_every_setting_is_the_default(tmp_path, caplog):
    empty = tmp_path / "mine.yaml"
    empty.write_text("# nothing yet\n")
    with caplog.at_level("WARNING", logger="verydeep"):
        cfg = load_config(empty)
    assert dataclasses.replace(cfg, recipe="") == load_config(None)
    assert [r.getMessage() for r in caplog.records] == [f"{empty} is empty: every setting is the default"]
