"""``reproduce`` under torchrun (2 gloo processes, CPU) on the tiny chain of Table 5: it
completes with one log; its cells equal a 1-process evaluation of the same checkpoints, each
validation image counted once; a SIGTERM in the second run checkpoints it on both ranks, and
the re-run does not train the first run again but resumes the second."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import write_tiny_imagenet
from verydeep.reproduce.runner import EvalSettings, evaluate_cells
from verydeep.reproduce.tables import cells_of
from verydeep.train.metrics import read_metrics

DRIVER = Path(__file__).with_name("torchrun_reproduce.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
LAUNCH = [sys.executable, "-m", "verydeep.parallel.launch", "--standalone", "--nproc_per_node", "2"]


def _torchrun(data, out, *extra, launcher=TORCHRUN, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    try:
        return subprocess.run([*launcher, str(DRIVER), str(data), str(out), "5", *extra], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"timed out after {timeout}s\n{err[-4000:]}")


@pytest.mark.slow
def test_reproduce_on_two_processes_resumes_after_sigterm(tmp_path):
    data = write_tiny_imagenet(tmp_path / "data", train_per_class=4, val_per_class=3)  # val: 9, odd
    out = tmp_path / "out"
    # preempted after the second run's first step, launched through verydeep.parallel.launch
    # (torchrun's launcher, ending in one line and 128 + the signal instead of torchrun's traceback)
    first = _torchrun(data, out, "paper_D_S256", launcher=LAUNCH)
    assert first.returncode == 143, first.stderr[-3000:]
    stopped = re.findall(r"verydeep: paper_D_S256 interrupted by SIGTERM at step (\d+)", first.stderr)
    assert len(stopped) == 2 and stopped[0] == stopped[1], first.stderr[-3000:]  # both ranks, the same step
    stopped_at = int(stopped[0])
    assert stopped_at < 4  # 4 steps in the run: it stopped before its end
    assert "Traceback" not in first.stderr
    assert first.stderr.strip().splitlines()[-1].startswith("verydeep launch: stopped by SIGTERM")
    assert "Unable to shutdown process" not in first.stderr  # no rank hung in a collective
    assert not (out / "paper_E_S256").exists()
    a_checkpoint = (out / "paper_A_S256" / "last.pt").stat().st_mtime_ns

    second = _torchrun(data, out)
    assert second.returncode == 0, second.stderr[-6000:]
    assert (out / "paper_A_S256" / "last.pt").stat().st_mtime_ns == a_checkpoint  # not trained again
    steps = [r["step"] for r in read_metrics(out / "paper_D_S256") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]  # resumed after the step it stopped at: every step once
    assert re.search(rf"resumed from {re.escape(str(out / 'paper_D_S256' / 'last.pt'))} at epoch \d+, step {stopped_at}\b",
                     second.stderr)
    log = second.stderr
    assert log.count("INFO verydeep.reproduce.reproduction: plan:") == 1  # rank 0 alone logs
    assert "paper_A_S256: finished earlier, skipped" in log and "each process takes batch/2" in log

    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2
    # the same checkpoints evaluated in this one process: the same cells, each image counted once
    one = evaluate_cells(cells_of([5]), EvalSettings(data_root=data, runs_dir=out, eval_dir=tmp_path / "eval1",
                                                     batch_size=4, device="cpu", progress=False))
    ours = {(c["table"], c["row"], c["column"]): c["ours"] for c in report["cells"]}
    assert set(ours) == set(one.cells) and len(ours) == 6
    for key, row in one.cells.items():
        assert ours[key]["images"] == row["images"] == 9
        assert ours[key]["top1_error"] == pytest.approx(row["top1_error"], abs=1e-6), key
        assert ours[key]["top5_error"] == pytest.approx(row["top5_error"], abs=1e-6), key
