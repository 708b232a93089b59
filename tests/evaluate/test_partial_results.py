"""Rows come out as soon as their reads are done, and eval's JSON is rewritten with each."""

import json

import pytest

from tests.evaluate.conftest import CLASSES, tiny_net
from tests.evaluate.test_cli import NAMES, save_run
from tests.evaluate.test_evaluator import data_cfg, val_samples
from verydeep.evaluate import EvalOptions, RowSpec, collect, evaluate_rows

pytestmark = pytest.mark.usefixtures("no_grad")
QUIET = EvalOptions(batch_size=4, progress=False)


def test_a_row_is_scored_when_its_last_read_is_done(dataset, monkeypatch):
    cfg = data_cfg(dataset)
    samples, classes = val_samples(cfg)
    rows = [RowSpec("center", (32, 48, 64)), RowSpec("center", (32,)), RowSpec("dense", (48,))]
    reads, arrived = [], []
    real = collect.build_eval_loader
    monkeypatch.setattr(collect, "build_eval_loader", lambda *a, **k: reads.append(k["scale"]) or real(*a, **k))
    streamed = evaluate_rows(tiny_net(), cfg, samples, rows, classes=classes, options=QUIET,
                             on_row=lambda i, r: arrived.append((i, len(reads), r.row["top1_error"])))
    # reads by ascending Q: center@32 is complete after the first read, the multi-scale row last
    assert [(i, n) for i, n, _ in arrived] == [(1, 1), (2, 3), (0, 4)]
    monkeypatch.setattr(collect, "build_eval_loader", real)
    whole = evaluate_rows(tiny_net(), cfg, samples, rows, classes=classes, options=QUIET)
    assert [r["top1_error"] for r in whole.rows] == [r["top1_error"] for r in streamed.rows]
    assert {i: e for i, _, e in arrived} == dict(enumerate(r["top1_error"] for r in whole.rows))


def test_eval_rewrites_its_json_as_rows_finish(dataset, tmp_path, monkeypatch):
    from verydeep.cli.main import main
    from verydeep.evaluate import report

    run = save_run(tmp_path / "run", tiny_net(), data_cfg(dataset), CLASSES, NAMES)
    out = tmp_path / "eval.json"
    seen = []
    real = report.write_report

    def spy(path, header, rows, **kw):
        written = real(path, header, rows, **kw)
        seen.append((json.loads(written.read_text())["header"]["status"], len(rows)))
        return written

    monkeypatch.setattr(report, "write_report", spy)
    assert main(["eval", "--checkpoint", str(run), "--data", str(dataset), "--protocol", "center",
                 "--scales", "single", "--scales", "multi", "--json", str(out), "--device", "cpu"]) == 0
    assert seen == [("running", 0), ("running", 1), ("complete", 2)]
