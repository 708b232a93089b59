"""``bench/gpu.sh``'s command line and budget rules, run for real (the env section only: it
needs no GPU with --quick)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), *args], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHON": sys.executable, **env})


def test_unknown_options_and_a_second_outdir_are_errors(tmp_path):
    bad = _run(str(tmp_path), "--qiuck")
    assert bad.returncode == 2 and "unknown option --qiuck" in bad.stderr
    two = _run(str(tmp_path / "a"), str(tmp_path / "b"))
    assert two.returncode == 2 and "one OUTDIR" in two.stderr


def test_quick_works_after_the_outdir_and_optional_sections_wait_for_their_time(tmp_path):
    out = tmp_path / "out"
    done = _run(str(out), "--quick", SECTIONS="env data", BUDGET="80")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((out / "env.json").read_text())["quick"] is True
    rows = [line.split("\t") for line in (out / "sections.tsv").read_text().splitlines()]
    assert rows[0][:2] == ["env", "ok"]
    assert rows[1][0] == "data" and rows[1][1].startswith("skipped (optional)")  # 90 s cap > 80 s budget
    assert "--quick" in (out / "gpu.md").read_text().splitlines()[0]
