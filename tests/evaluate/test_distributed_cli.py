"""``verydeep eval`` under torchrun (2 gloo processes): one log, one report, rows streamed."""

import json
import os
import subprocess
import sys

import pytest

from tests.evaluate.conftest import CLASSES, tiny_net
from tests.evaluate.test_cli import NAMES, save_run
from tests.evaluate.test_evaluator import data_cfg


@pytest.mark.slow
def test_eval_under_torchrun_logs_and_writes_once(dataset, tmp_path):
    run = save_run(tmp_path / "run", tiny_net(), data_cfg(dataset), CLASSES, NAMES)
    out = tmp_path / "eval.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "verydeep",
         "eval", "--checkpoint", str(run), "--data", str(dataset), "--protocol", "center,dense", "--scales",
         "single", "--scales", "multi", "--device", "cpu", "-b", "4", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("INFO verydeep.evaluate.checkpoints: loaded") == 1  # rank 0 only
    assert proc.stdout.count("top-1 err") == 1
    report = json.loads(out.read_text())
    assert report["header"]["status"] == "complete" and len(report["rows"]) == 4
    assert all(r["images"] == 7 for r in report["rows"])
