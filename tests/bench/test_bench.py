"""`verydeep bench` runs end to end on CPU and reports every field (timings are not checked)."""

from __future__ import annotations

import json
from pathlib import Path

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
    report = _run(tmp_path, capsys, "train", "--crop-size", "32", "--batch-size", "2",
                  "--variants", "reference,reference+timm,ours+slices+nosync")
    rows = {r["variant"]: r for r in report["results"]}
    assert set(rows) == {"reference", "reference+timm", "ours+slices+nosync"}
    assert set(rows["ours+slices+nosync"]["ratios"]) == {"reference", "reference+timm"}
    assert rows["reference"]["ratio"] is None
    ours = rows["ours+slices+nosync"]
    assert ours["ratio"] > 0 and ours["reference"] == "reference+timm"  # the headline: the stronger one
    assert all(r["nonfinite_losses"] == 0 for r in rows.values())
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


def test_bench_e2e_reads_jpegs_through_every_pipeline(tmp_path, capsys):
    report = _run(tmp_path, capsys, "e2e", "--images", "8", "--classes", "2", "--batch-size", "2",
                  "--workers", "0", "--crop-size", "32", "--scale-min", "40", "--scale-max", "64",
                  "--data", str(tmp_path / "jpegs"), "--no-peak")
    rows = {r["variant"]: r for r in report["results"]}
    refs = {"reference", "reference+timm", "reference+timm+jitter"}
    assert set(rows) == refs | {"ours", "ours+gpudecode"}
    for ours in ("ours", "ours+gpudecode"):  # each of ours against every reference, headline: same transform
        assert set(rows[ours]["ratios"]) == refs and rows[ours]["ratio"] > 0
        assert rows[ours]["reference"] == "reference+timm+jitter" and rows[ours]["nonfinite_losses"] == 0
    assert rows["reference+timm+jitter"]["drift"] > 0  # timed again at the end
    assert "S in [40, 64]" in rows["reference+timm+jitter"]["notes"]
    assert "RandomResizedCrop" in rows["reference+timm"]["notes"]
    assert len(list((tmp_path / "jpegs" / "train").rglob("*.JPEG"))) == 8


def test_e2e_times_a_sustained_window_longer_than_the_prefetched_batches():
    """The loader's queue (workers x prefetch batches, ready before timing starts) cannot
    cover a timed window, the warm-up drains it, and the file list is cycled to fit."""
    from verydeep.bench.end_to_end import E2EBenchConfig, timing_plan

    cfg = E2EBenchConfig.for_gpu()
    plan = timing_plan(cfg, n_images=cfg.images)
    prefetched = cfg.workers * cfg.prefetch
    assert plan.steps > prefetched and plan.steps >= 40 and plan.windows >= 2
    assert plan.warmup >= 2 * cfg.workers
    assert plan.cycles * cfg.images >= plan.batches * cfg.batch_size
    with pytest.raises(ValueError, match="no longer than"):
        timing_plan(E2EBenchConfig.for_gpu(steps=prefetched), n_images=cfg.images)
    with pytest.raises(ValueError, match="at least 2 x workers"):
        timing_plan(E2EBenchConfig.for_gpu(warmup=cfg.workers), n_images=cfg.images)


def test_e2e_with_workers_times_every_window(tmp_path):
    from verydeep.bench.end_to_end import E2EBenchConfig, run_e2e_bench

    cfg = E2EBenchConfig(images=6, classes=2, batch_size=2, workers=1, prefetch=2, steps=3, repeats=2,
                         crop_size=32, scale_min=40, scale_max=48, device="cpu", variants="reference,ours",
                         data_dir=str(tmp_path))
    rows = {r.variant: r for r in run_e2e_bench(cfg)}
    for row in rows.values():  # (2 warm-up + 2 x 3 timed) batches of 2 = 16 images from 6 files: cycled 3x
        assert len(row.samples) == 2 and "cycled 3x" in row.notes and "2 windows of 3 batches" in row.notes


def test_generated_jpegs_weigh_what_imagenets_do(tmp_path):
    from verydeep.bench.jpeg_files import write_jpeg_files

    sizes = [Path(p).stat().st_size for p, _ in write_jpeg_files(tmp_path, n=6, workers=1)]
    assert 90_000 < sum(sizes) / len(sizes) < 130_000  # ImageNet's average: about 110 KB


def test_data_bench_compares_like_with_like_by_median(tmp_path):
    from verydeep.bench.data_pipeline import REFERENCE_OF, run_data_pipeline_bench

    report = run_data_pipeline_bench(images=4, batch_size=2, rounds=3, crop=32, scale_min=40, scale_max=48,
                                     data_dir=str(tmp_path))
    rates = report["images_per_s_per_worker"]
    for name, rounds in report["rounds"].items():
        assert len(rounds) == 3 and rates[name] == sorted(rounds)[1]
    assert set(report["ratio_vs_reference"]) == set(REFERENCE_OF) == set(report["ratio_per_round"])
    spread = report["ratio_per_round"]["ours_scale_jitter"]
    assert spread["min"] <= spread["median"] <= spread["max"]
    assert REFERENCE_OF["ours_scale_jitter_worker"] == "reference_scale_jitter_uint8"
    assert "ours_gpu_path_worker" in rates and report["setup"]["mean_file_kb"] > 90


def test_headline_reference_is_the_strongest_doing_our_transform():
    from verydeep.bench.train_step import parse_variant, reference_names

    names = ["reference", "reference+jitter", "ours", "reference+timm", "reference+timm+jitter"]
    parsed = [(n, *parse_variant(n, ("gpudecode",), ("timm", "jitter"))) for n in names]
    assert reference_names(parsed) == ["reference+timm+jitter", "reference+timm", "reference+jitter", "reference"]


def test_nonfinite_losses_are_counted_after_the_fact():
    import torch

    from verydeep.bench.train_step import count_nonfinite

    losses = [torch.tensor(1.0), torch.tensor(float("inf")), torch.tensor(2.0), torch.tensor(float("nan"))]
    assert count_nonfinite(losses) == 2 and count_nonfinite([]) == 0


def test_a_window_lasts_at_least_min_seconds_and_at_least_its_steps(monkeypatch):
    import torch

    from verydeep.bench import common

    clock = [0.0]
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])
    calls = []

    def step():  # each step takes 1/8 s of the fake clock (exact in binary)
        calls.append(1)
        clock[0] += 0.125

    _, _, rates = common.time_steps(step, device=torch.device("cpu"), steps=2, warmup=1, repeats=2,
                                    images_per_step=1, min_seconds=0.5)
    assert len(calls) == 1 + 2 * 4 and rates == [8.0, 8.0]  # 4 steps of 1/8 s per window, twice
    calls.clear()
    common.time_steps(step, device=torch.device("cpu"), steps=30, warmup=0, repeats=1, images_per_step=1,
                      min_seconds=0.5)
    assert len(calls) == 30  # at least its steps, however long that takes
    calls.clear()
    common.time_steps(step, device=torch.device("cpu"), steps=3, warmup=0, repeats=1, images_per_step=1,
                      min_seconds=10, max_steps=5)
    assert len(calls) == 5  # a finite loader's pass ends the window early


def test_step_profile_sorts_a_training_steps_time_by_kind():
    import torch

    from verydeep.bench.step_profile import KINDS, kind_of, step_profile

    assert kind_of("aten::convolution_backward", False) == "convolution"
    assert kind_of("aten::addmm", False) == "matmul"
    assert kind_of("aten::copy_", False) == "copies"
    assert kind_of("aten::add_", True) == "optimiser" and kind_of("aten::add_", False) == "elementwise"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=False)
    x = torch.randn(2, 3, 8, 8)

    def step():
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    profile = step_profile(step, torch.device("cpu"), steps=3)
    shares = profile["shares"]
    assert set(shares) == set(KINDS) and abs(sum(shares.values()) - 1) < 1e-3
    assert shares["convolution"] > 0 and shares["matmul"] > 0 and shares["optimiser"] > 0
    assert profile["steps"] == 3 and profile["clock"] == "host"


def test_gpucheck_compares_batches_decoded_while_training_is_queued(tmp_path):
    from verydeep.bench.gpu_data_check import check
    from verydeep.bench.jpeg_files import write_jpeg_files

    import torch

    write_jpeg_files(tmp_path, n=8, classes=2, workers=1)
    result = check(str(tmp_path), torch.device("cpu"), batch_size=4, batches=2, scale_min=40, scale_max=48,
                   crop=32, draft=False, timed=1, queued=1, width=1 / 16)
    assert result["passed"] and result["labels_equal"] and result["batches_compared"] == 2
    assert result["nonfinite_losses"] == 0 and result["training_steps_queued_per_batch"] == 1
    assert result["mean_level_difference"] < 0.5 and result["device_side_images_per_s"] > 0


def test_gpucheck_fails_on_corruption_not_on_resampling_noise():
    import torch

    from verydeep.bench.gpu_data_check import verdict

    noise = torch.zeros(100_000)
    noise[::50] = 2.0  # a level or two here and there: two decoders, two resamplers
    assert verdict(noise, True, 0, draft=False)[0]
    corrupt = noise.clone()
    corrupt[:5_000] = 80.0  # a garbage block: 5% of the pixels far off
    passed, why = verdict(corrupt, True, 0, draft=False)
    assert not passed and "beyond resampling tolerance" in why
    assert not verdict(noise, False, 0, draft=False)[0]  # labels
    assert not verdict(noise, True, 3, draft=False)[0]  # non-finite losses
    assert verdict(corrupt, True, 0, draft=True)[0]  # draft on: reported, not judged


def test_our_step_runs_the_loops_optimiser_only_when_asked():
    """``ours`` is the run's optimiser (fused); ``ours+loop`` SGD's per-tensor loops, the
    reference's kernels on the CPU; ``ours+foreach`` the foreach kernels."""
    import torch

    from verydeep.bench.train_step import OurStep, TrainBenchConfig
    cfg = TrainBenchConfig(model="A", width=1 / 16, image_size=32, batch_size=2, num_classes=4, device="cpu")
    kinds = {}
    for opts in (set(), {"loop"}, {"foreach"}):
        group = OurStep(cfg, torch.device("cpu"), opts).optimizer.param_groups[0]
        kinds[tuple(opts)] = (bool(group.get("fused")), group.get("foreach"))
    assert kinds == {(): (True, None), ("loop",): (False, False), ("foreach",): (False, True)}
