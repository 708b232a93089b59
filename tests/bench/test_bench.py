"""`verydeep bench` runs end to end on CPU and reports every field (timings are not checked)."""

from __future__ import annotations

import json

import pytest

from verydeep.cli.main import main

TINY = ["--device", "cpu", "--width", "0.0625", "--steps", "1", "--warmup", "0", "--repeats", "1"]
FIELDS = ("bench", "variant", "images_per_s", "ms_per_step", "batch_size", "peak_memory_mb", "tflops", "ratio")


def _run(tmp_path, capsys, *argv):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    assert main(["bench", *argv, *TINY, "--json", str(out), "--markdown", str(md)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert "| bench | variant |" in printed and md.read_text() in printed
    for row in report["results"]:
        for field in FIELDS:
            assert field in row
        assert row["images_per_s"] > 0 and row["ms_per_step"] > 0 and row["peak_memory_mb"] > 0
    return report


def test_bench_train_reports_ours_and_reference(tmp_path, capsys):
    report = _run(tmp_path, capsys, "train", "--image-size", "32", "--batch-size", "2",
                  "--variants", "reference,ours+slices+nosync")
    rows = {r["variant"]: r for r in report["results"]}
    assert set(rows) == {"reference", "ours+slices+nosync"}
    assert rows["reference"]["ratio"] is None
    ours = rows["ours+slices+nosync"]
    assert ours["ratio"] > 0 and ours["reference"] == "reference"
    assert ours["tflops"] > 0 and ours["peak_fraction"] > 0
    assert report["peak"]["tflops"] > 0 and report["machine"]["cpu_cores"] >= 1
    assert report["config"]["train"]["image_size"] == 32


def test_bench_eval_covers_protocols_and_scales(tmp_path, capsys):
    report = _run(tmp_path, capsys, "eval", "--crop-size", "32", "--scales", "48", "--batch-size", "1",
                  "--no-peak")
    variants = [r["variant"] for r in report["results"]]
    for who in ("ours", "reference"):
        assert f"{who} center 32-crop" in variants
        for q in (48,):
            assert f"{who} dense Q={q}" in variants and f"{who} multicrop Q={q}" in variants
    assert all(r["ratio"] > 0 for r in report["results"] if r["variant"].startswith("ours"))


def test_reference_matches_ours_in_arithmetic():
    """Both sides of every ratio do the same work: same parameter count and MACs."""
    from verydeep.bench.common import forward_macs
    from verydeep.bench.reference import reference_model
    from verydeep.models import count_parameters, create_model

    ours = create_model("vgg16", num_classes=10, width=0.0625, head_size=2)
    ref = reference_model("vgg16", num_classes=10, width=0.0625, head_size=2)
    assert count_parameters(ours) == count_parameters(ref)
    assert forward_macs(ours, 64) == forward_macs(ref, 64)


def test_eval_protocols_agree_with_reference():
    """The reference protocols compute the same posteriors as ours, so the ratio compares like with like."""
    import torch

    from verydeep.bench.evaluation import reference_center, reference_dense, reference_multicrop
    from verydeep.bench.reference import reference_model
    from verydeep.evaluate.protocols import center, dense_scores, multicrop
    from verydeep.models import create_model

    torch.manual_seed(0)
    ours = create_model("vgg11", num_classes=5, width=0.0625, head_size=1).eval()
    ref = reference_model("vgg11", num_classes=5, width=0.0625, head_size=1).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 48, 64)
    torch.testing.assert_close(center(ours, x[..., :32, :32]), reference_center(ref, x[..., :32, :32], None))
    torch.testing.assert_close(dense_scores(ours, x), reference_dense(ref, x, None))
    torch.testing.assert_close(multicrop(ours, x, 32), reference_multicrop(ref, x, 32, None))


def test_unknown_variant_is_a_clear_error(capsys):
    assert main(["bench", "train", *TINY, "--variants", "ours+warp"]) == 2
    assert "ours+warp" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["bench", "train", "--help"], ["bench", "eval", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0


def test_bench_e2e_reads_jpegs_through_both_pipelines(tmp_path, capsys):
    report = _run(tmp_path, capsys, "e2e", "--images", "8", "--classes", "2", "--batch-size", "2",
                  "--workers", "0", "--crop-size", "32", "--scale-min", "40", "--scale-max", "64",
                  "--data-dir", str(tmp_path / "jpegs"), "--no-peak")
    rows = {r["variant"]: r for r in report["results"]}
    assert set(rows) == {"reference", "ours"} and rows["ours"]["ratio"] > 0
    assert len(list((tmp_path / "jpegs" / "train").rglob("*.JPEG"))) == 8
