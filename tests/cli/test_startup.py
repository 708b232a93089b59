"""The commands that need no tensors answer without loading torch (issue 19: 3-4 s of imports
before `verydeep recipes` printed a line). Checked in a fresh interpreter: sys.modules after the
command says what it imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "numpy", "matplotlib")

PROBE = """
import json, sys
from verydeep.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}), file=sys.stderr)
""" % (HEAVY,)


def _run(*argv: str, cwd=None) -> tuple[int, list[str], str, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120, cwd=cwd)
    *lines, last = proc.stderr.strip().splitlines()
    probe = json.loads(last)
    return probe["code"], probe["heavy"], proc.stdout, "\n".join(lines)


def test_importing_the_cli_loads_no_heavy_module():
    code = "import sys, verydeep.cli.main; print([m for m in %r if m in sys.modules])" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_recipes_lists_the_packaged_recipes_without_torch():
    code, heavy, out, _ = _run("recipes")
    assert code == 0 and heavy == []
    assert any(line.startswith("demo ") for line in out.splitlines())


def test_one_recipe_in_full_without_torch():
    code, heavy, out, _ = _run("recipes", "demo")
    assert code == 0 and heavy == []
    assert "model:" in out


@pytest.mark.parametrize("argv, exit_code, says", [
    (("data", "info", "--data", "{tmp}/missing"), 3, "missing"),
    (("models", "vgg17"), 2, "unknown model name 'vgg17'"),  # and no table header before it (out == "")
    (("train", "--config", "nope"), 2, "recipe not found: nope"),
    (("train", "--config", "demo", "--data", "{tmp}/missing", "--out", "{tmp}/run"), 3, "missing"),
    (("train", "--config", "demo", "--model", "vgg17", "--out", "{tmp}/run"), 2, "unknown model name 'vgg17'"),
    (("train", "--resume", "{tmp}/run"), 6, "nothing to resume"),
    (("eval", "--checkpoint", "{tmp}/run", "--data", "{tmp}"), 4, "checkpoint not found"),
    (("eval", "--checkpoint", "{tmp}", "--data", "{tmp}/missing"), 3, "not a folder"),
    (("predict", "--checkpoint", "{tmp}/run", "a.jpg"), 4, "checkpoint not found"),
    (("plot", "{tmp}/run"), 2, "no metrics.jsonl"),
    (("data", "stats", "--data", "{tmp}/missing"), 3, "missing"),
    (("data", "prepare", "--data", "{tmp}/missing", "--out", "{tmp}/run"), 3, "missing is not a folder"),
    (("demo", "--model", "vgg17", "--data", "{tmp}/run/data", "--out", "{tmp}/run"), 2, "unknown model name"),
])
def test_errors_that_need_no_tensors_come_without_torch(tmp_path, argv, exit_code, says):
    code, heavy, out, err = _run(*(a.format(tmp=tmp_path) for a in argv))
    assert code == exit_code and heavy == []
    assert out == "" and says in err.splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # a start that failed made no run folder (nor demo data)

