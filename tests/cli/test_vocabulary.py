"""One flag per concept, one meaning in every command (verydeep.cli.vocabulary, README's table)."""

import argparse
import json
import re
from pathlib import Path

import pytest

from verydeep.cli.main import build_parser, main
from verydeep.cli.vocabulary import TRAINING_SHORTHANDS, training_overrides
from verydeep.config import load_config


def all_parsers():
    """(command path, parser) of every command and sub-command."""
    out, todo = [], [("verydeep", build_parser())]
    while todo:
        name, parser = todo.pop()
        out.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return out


def options(parser):
    return {opt: action for action in parser._actions for opt in action.option_strings}


def test_every_concept_has_one_spelling_and_one_meaning():
    seen: dict[str, set] = {}
    for name, parser in all_parsers():
        opts = options(parser)
        for flag in ("--data", "--out", "--json", "--checkpoint", "--device", "--amp", "--batch-size",
                     "--workers", "--model"):
            if flag in opts and opts[flag].help != argparse.SUPPRESS:
                seen.setdefault(flag, set()).add(name)
        if "--json" in opts:  # a path, or stdout when given alone: everywhere
            assert opts["--json"].nargs == "?" and opts["--json"].const == "-", name
        if "--out" in opts and opts["--out"].help != argparse.SUPPRESS:
            assert opts["--out"].metavar == "DIR" and "folder" in opts["--out"].help, name
        if "--batch-size" in opts:
            assert "-b" in opts and "GLOBAL" in opts["--batch-size"].help, name
        if "--device" in opts:
            assert "cuda:N" in opts["--device"].help, name
        if "--checkpoint" in opts:
            assert "run folder" in opts["--checkpoint"].help, name
        for legacy in ("--val-dir", "--run", "--output", "--json-out"):
            assert legacy not in opts, (name, legacy)
    assert {"verydeep train", "verydeep demo", "verydeep eval", "verydeep data info", "verydeep data check",
            "verydeep data stats", "verydeep data prepare"} <= seen["--data"]
    assert {"verydeep train", "verydeep demo", "verydeep eval", "verydeep predict",
            "verydeep bench train"} <= seen["--device"]
    assert {"verydeep eval", "verydeep predict", "verydeep export"} <= seen["--checkpoint"]
    assert {"verydeep eval", "verydeep predict", "verydeep data stats", "verydeep bench eval"} <= seen["--json"]


def test_every_help_builds(capsys):
    for name, _ in all_parsers():
        with pytest.raises(SystemExit) as e:
            main([*name.split()[1:], "--help"])
        assert e.value.code == 0, name
    assert "GLOBAL" in capsys.readouterr().out


def test_training_shorthands_are_the_recipe_keys(tmp_path):
    args = build_parser().parse_args([
        "train", "--config", "demo", "--model", "vgg13_bn", "-b", "64", "--lr", "0.05", "--epochs", "3",
        "--workers", "0", "--device", "cuda:1", "--amp", "bf16", "--data", str(tmp_path / "1e3"),
        "--set", "optim.lr=0.02"])
    cfg = load_config(args.config, training_overrides(args))
    assert cfg.model.name == "vgg13_bn" and cfg.train.batch_size == 64 and cfg.train.epochs == 3
    assert cfg.data.workers == 0 and cfg.train.device == "cuda:1" and cfg.train.amp == "bf16"
    assert cfg.data.root == str(tmp_path / "1e3")  # a path stays a string, whatever it looks like
    assert cfg.optim.lr == 0.02  # an explicit --set wins over the shorthand
    assert cfg.recipe == "demo"
    assert set(TRAINING_SHORTHANDS.values()) <= {f"{s}.{k}" for s, v in json.loads(json.dumps(
        {"model": vars(cfg.model), "data": vars(cfg.data), "train": vars(cfg.train), "optim": vars(cfg.optim)},
        default=str)).items() for k in v}


@pytest.mark.parametrize("argv", [
    ["eval", "--checkpoint", "x", "--limit", "-2"],
    ["eval", "--checkpoint", "x", "--limit", "0"],
    ["predict", "--checkpoint", "x", "--topk", "-1", "a.jpg"],
    ["train", "--config", "demo", "-b", "0"],
    ["train", "--config", "demo", "--lr", "-0.1"],
    ["train", "--config", "demo", "--amp", "fp8"],
])
def test_bad_values_are_usage_errors_without_a_traceback(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage:" in err and "Traceback" not in err


def test_a_bad_device_is_named(tmp_path, capsys):
    rc = main(["train", "--config", "demo", "--device", "tpu", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "train: device" in err and "cuda:N" in err and "tpu" in err


def test_one_spelling_per_flag_the_old_ones_are_refused(tmp_path, capsys):
    from tests.data.conftest import WNIDS, write_class_folders

    root = tmp_path / "ds"
    write_class_folders(root / "train", WNIDS, per_class=2)
    assert main(["data", "info", "--data", str(root), "--index-cache", str(tmp_path / "cache")]) == 0
    assert "train:   6 images" in capsys.readouterr().out
    assert main(["data", "stats", "--data", str(root), "--images", "2", "--workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 2  # --json alone: stdout
    for old in (["data", "info", str(root)], ["data", "stats", "--data", str(root), "--out", str(tmp_path / "s")],
                ["data", "prepare", str(root), str(tmp_path / "copy")], ["data", "demo", str(tmp_path / "demo")],
                ["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x"), "--dynamo"]):
        with pytest.raises(SystemExit) as e:
            main(old)
        assert e.value.code == 2, old
        assert "unrecognized arguments" in capsys.readouterr().err
    assert not (tmp_path / "copy").exists() and not (tmp_path / "demo").exists()


def test_export_without_onnx_names_the_extra(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("onnx") else real(name, *a))
    rc = main(["export", "--checkpoint", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'verydeep[onnx]'" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_a_run_folder_stands_for_its_best_checkpoint_everywhere(tmp_path):
    """--checkpoint, model.init_from and model.weights: one rule (verydeep.checkpoint.resolve)."""
    import torch

    from verydeep.checkpoint import resolve, save_weights
    from verydeep.models import create_model
    from verydeep.models.config import ModelConfig
    from verydeep.train.starting_net import model_from_config

    run = tmp_path / "runs" / "A"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    a = create_model("A", num_classes=3, width=1 / 16, head_size=1, fc_features=16)
    save_weights(a, run / "last.pt")
    assert resolve(run) == run / "last.pt"  # before the first validation
    save_weights(a, run / "best.pt")
    assert resolve(run) == run / "best.pt" and resolve(run / "last.pt") == run / "last.pt"
    same = model_from_config(ModelConfig(name="A", width=1 / 16, fc_features=16, weights=str(run)), 3, 32)
    torch.testing.assert_close(same.state_dict(), a.state_dict())
    deeper = model_from_config(ModelConfig(name="B", width=1 / 16, fc_features=16, init_from=str(run)), 3, 32)
    torch.testing.assert_close(deeper.features[0].weight, a.features[0].weight)
    with pytest.raises(FileNotFoundError, match="holds no best.pt or last.pt"):
        resolve(tmp_path / "runs")


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_vocabulary() -> dict[str, set[str]]:
    """The README's vocabulary table: flag -> the commands it names (``data info/check`` is two,
    ``bench (all of them)`` every bench command; what follows a ``;`` is not a command)."""
    subcommands = {name.split(" ", 1)[1]: name for name, _ in all_parsers() if name != "verydeep"}
    text = README.read_text().split("| concept | flag | commands | meaning |", 1)[1]
    table = {}
    for line in text.split("\n\n", 1)[0].strip().splitlines()[1:]:
        _, _, flag, commands, *_ = (cell.strip() for cell in line.split("|"))
        flag = re.findall(r"--[a-z-]+", flag)[0]
        names = set()
        for item in commands.split(";")[0].split(", "):
            if item.endswith(" (all of them)"):
                group = item.removesuffix(" (all of them)")
                names |= {c for c in subcommands if c.startswith(group + " ")}
                continue
            head, _, tails = item.rpartition(" ")
            names |= {f"{head} {t}".strip() for t in tails.split("/")}
        table[flag] = names
    return table


def test_the_readme_table_names_every_command_of_each_flag_bench_included():
    table = readme_vocabulary()
    assert {"--data", "--out", "--json", "--device", "--amp", "--model", "--batch-size", "--workers", "--crop-size",
            "--devices", "--resume"} <= set(table)
    for flag, listed in table.items():
        actual = {name.split(" ", 1)[1] for name, parser in all_parsers() if name != "verydeep"
                  and flag in options(parser) and options(parser)[flag].help != argparse.SUPPRESS}
        assert listed == actual, flag
    assert {"bench e2e", "bench data"} <= table["--data"] and "bench parallel" in table["--crop-size"]


def test_one_flag_per_concept_across_commands():
    """No command spells the dataset, the input side or the device count its own way."""
    for name, parser in all_parsers():
        visible = {opt for opt, action in options(parser).items() if action.help != argparse.SUPPRESS}
        assert not visible & {"--data-dir", "--data-path", "--image-size", "--crop", "--world", "--output-dir"}, name


@pytest.mark.parametrize("argv, dest, value", [
    (["bench", "e2e", "--data-dir", "/j"], "data_dir", "/j"),  # timm's spelling
    (["bench", "data", "--data", "/j"], "data_dir", "/j"),
    (["data", "info", "--data-path", "/d"], "data", "/d"),  # torchvision's
    (["train", "--config", "demo", "--output-dir", "/o", "-j", "3"], "out", "/o"),
    (["train", "--config", "demo", "-j", "3"], "workers", 3),
])
def test_other_tools_spellings_are_taken(argv, dest, value, capsys):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    assert capsys.readouterr().err == ""  # taken as they are, without a note


@pytest.mark.parametrize("argv, ours", [
    (["models", "--image-size", "64"], "--crop-size"),
    (["bench", "parallel", "--crop", "32"], "--crop-size"),
    (["bench", "parallel", "--world", "3"], "--devices"),
    (["export", "--checkpoint", "r", "--out", "x", "--image-size", "96"], "--crop-size"),
])
def test_our_older_spellings_are_refused_naming_the_flag(argv, ours, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].endswith(f"is not a verydeep flag any more; use {ours}")


@pytest.mark.parametrize("flag, ours", [
    ("--weight-decay", "--set optim.weight_decay=VALUE"), ("--lr-scheduler", "--set schedule.name="),
    ("--model-ema", "--set train.ema_decay="), ("--train-crop-size", "--set data.crop_size=N"),
])
def test_other_tools_flags_get_a_one_line_hint_naming_ours(flag, ours, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", "demo", flag, "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"verydeep: error: {flag} is not a verydeep flag; here it is {ours}")


def test_every_hint_names_a_real_recipe_key():
    from verydeep.cli.vocabulary import FOREIGN_FLAGS, HINT_KEY
    from verydeep.config import Config, config_to_dict

    keys = {f"{section}.{key}" for section, values in config_to_dict(Config()).items() if isinstance(values, dict)
            for key in values}
    named = {m for hint in FOREIGN_FLAGS.values() for m in HINT_KEY.findall(hint)}
    assert named and named <= keys


def test_every_option_states_its_default():
    for name, parser in all_parsers():
        formatter = parser.formatter_class(prog=name)
        for action in parser._actions:
            if (action.option_strings and action.help != argparse.SUPPRESS and action.default is not None
                    and action.default is not argparse.SUPPRESS and not isinstance(action.default, bool)
                    and action.default not in ("", [])):
                assert "default" in formatter._get_help_string(action), (name, action.option_strings)
