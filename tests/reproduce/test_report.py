"""The reproduction end to end on tiny nets (every table, the report's files, the findings' paired
tests), and the imagenet profile's dry run."""

import json

import pytest
import torch

from tests.reproduce.conftest import TINY
from verydeep.cli.main import main
from verydeep.reproduce.estimate import round_up, wall_clock_hours
from verydeep.reproduce.findings import VERDICTS
from verydeep.reproduce.profiles import MINI, all_departures, describe_data, fill_data
from verydeep.reproduce.reproduction import Request, reproduce
from verydeep.reproduce.report import paper_numbers
from verydeep.reproduce.tables import paper_cells
from verydeep.runtime import Runtime, build_runtime, precision_of, tf32_allowed


def test_every_table_on_tiny_nets(tiny_data, tmp_path):
    files = reproduce(Request(profile=TINY, data=tiny_data, out=tmp_path, device="cpu", progress=False))
    assert [f.name for f in files] == ["report.md", "report.json", "report.png"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["cells"]) == len(paper_cells()) == 12 + 10 + 6 + 4
    assert all(0 <= c["ours"]["top1_error"] <= 100 and c["paper"] for c in report["cells"])
    seven = next(c for c in report["cells"] if c["row"].startswith("7 nets"))
    assert len(seven["ours"]["net_scales"]) == 7  # fused from saved posteriors, each net at its own Q
    # its jittered D is the FC-only one (the 13th run), not Table 5's
    assert any("paper_D_multiscale_fconly" in f for f in seven["ours"]["fused"])
    assert not any("paper_D_multiscale.posteriors" in f for f in seven["ours"]["fused"])
    assert {f["verdict"] for f in report["findings"]} <= set(VERDICTS)
    # every comparison paired-tested on the cells' per-image results (the fusions' included)
    comparisons = [c for f in report["findings"] for c in f["comparisons"]]
    assert comparisons and all(0 < c["p_value"] <= 1 and c["images"] == report["cells"][0]["ours"]["images"]
                               for c in comparisons)
    assert "top1_correct" not in report["cells"][0]["ours"]
    # the precision stated and every departure listed: model selection, the dense pooling's rounding
    assert report["precision"].startswith("training fp32; evaluation fp32") and report["dense pooling"] == "floor"
    whats = [d["what"] for d in report["departures"]]
    assert any("best.pt" in w for w in whats) and any("round their output size down" in w for w in whats)
    text = (tmp_path / "report.md").read_text()
    for heading in ("Table 3", "Table 4", "Table 5", "Table 6", "findings", "Departures", "Runs"):
        assert heading in text
    # a second call trains and evaluates nothing again: the same report from what is on disk
    evaluated = {p: p.stat().st_mtime_ns for p in (tmp_path / "eval").iterdir()}
    reproduce(Request(profile=TINY, data=tiny_data, out=tmp_path, device="cpu", progress=False))
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "eval").iterdir()} == evaluated
    assert json.loads((tmp_path / "report.json").read_text())["cells"] == report["cells"]
    # Caffe's round-up pooling asked for: the dense cells are evaluated again, the departure gone
    reproduce(Request(profile=TINY, data=tiny_data, out=tmp_path, device="cpu", progress=False, tables=(3,),
                      dense_pooling="ceil"))
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["dense pooling"] == "ceil"
    assert not any("round their output size down" in d["what"] for d in again["departures"])
    cache = json.loads((tmp_path / "eval" / "paper_A_S256.json").read_text())
    assert cache["dense_pooling"] == "ceil" and cache["precision"] == "fp32"


def test_table6_has_every_row_of_the_papers_table():
    rows = [(c.row, c.paper, [(e.run, e.protocol) for e in c.evals]) for c in paper_cells() if c.table == 6]
    ms = ("paper_D_multiscale", "paper_E_multiscale")
    assert rows == [
        ("7 nets (ILSVRC submission), dense", (24.7, 7.5),
         [(r, "dense") for r in ("paper_D_S256", "paper_D_S384", "paper_D_multiscale_fconly", "paper_C_S256",
                                 "paper_C_S384", "paper_E_S256", "paper_E_S384")]),
        ("D/[256;512] + E/[256;512], dense", (24.0, 7.1), [(r, "dense") for r in ms]),
        ("D/[256;512] + E/[256;512], multi-crop", (23.9, 7.2), [(r, "multicrop") for r in ms]),
        ("D/[256;512] + E/[256;512], multi-crop & dense", (23.7, 6.8), [(r, "dense+multicrop") for r in ms]),
    ]
    assert all(e.scales == "multi" for c in paper_cells() if c.table == 6 for e in c.evals)


def test_imagenet_dry_run_prints_the_full_plan(tiny_data, tmp_path, capsys):
    assert main(["reproduce", "--profile", "imagenet", "--data", str(tiny_data), "--out", str(tmp_path),
                 "--dry-run", "--images-per-s", "1000", "--devices", "4"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line[:3].strip().rstrip(".").isdigit()]
    assert len(lines) == 13 and "paper_A_S256" in lines[0] and "GPU-h" in lines[0]
    assert "paper_D_multiscale_fconly" in lines[-1] and "FC layers only" in lines[-1]
    # the recipes' 74 epochs are a cap the plateau rule ends earlier, said so
    assert all("up to 74 epochs (the plateau rule ends it at the first plateau after 3 LR decreases)" in line
               for line in lines)
    assert "from model.init_from=paper_A_S256/best.pt" in out and "4 device(s)" in out
    assert not list(tmp_path.iterdir())  # a dry run writes nothing
    # 8 training images, fewer than a batch of 256: rounded up, never "~0 GPU-h"
    assert all("<= 0.1 GPU-h" in line for line in lines) and "0.0 GPU-h" not in out
    # evaluation per table, from the protocols' MACs, in the total; wall-clock said how
    assert all(f"evaluation, Table {t}:" in out for t in (3, 4, 5, 6))
    assert "GPU-hours / devices / 0.9375" in out and "global" in out
    # the precision and every departure: bf16 autocast on the GPUs by default, model selection
    assert "precision: training bf16 autocast (fp32 weights), TF32 on" in out
    assert "  - precision: training in bf16" in out and "  - each net is its best.pt" in out
    assert "launch on 4 device(s): python -m verydeep.parallel.launch --standalone --nproc_per_node 4 -m verydeep reproduce" in out
    # the exact run: fp32, TF32 off, no precision departure; 16 devices: one torchrun per node under SLURM
    assert main(["reproduce", "--profile", "imagenet", "--data", str(tiny_data), "--out", str(tmp_path),
                 "--dry-run", "--images-per-s", "1000", "--devices", "16", "--amp", "none"]) == 0
    out = capsys.readouterr().out
    assert "precision: training fp32, TF32 off; evaluation fp32, TF32 off" in out
    assert "  - precision" not in out and "pools round their output size down" not in out  # imagenet: Caffe's ceil
    assert "srun python -m verydeep.parallel.launch --nnodes 2 --nproc_per_node 8" in out and "--amp none" in out.splitlines()[-1]


def test_estimate_rounds_up_and_scales_wall_clock():
    assert round_up(1e-6) == pytest.approx(0.1) and round_up(0.0) == 0.0 and round_up(2.01) == pytest.approx(2.1)
    assert round_up(0.3) == pytest.approx(0.3)
    assert wall_clock_hours(3.75, 4) == pytest.approx(1.0)  # the paper's 3.75x on 4 GPUs
    assert wall_clock_hours(2.0, 1) == 2.0


def test_precision_named():
    assert precision_of("auto", "cuda") == "bf16 autocast (fp32 weights), TF32 on"
    assert precision_of("none", "cuda") == "fp32, TF32 off"
    assert precision_of("auto", "cpu") == "fp32"
    runtime = build_runtime("cpu", "none")
    assert runtime.exact_fp32 and runtime.precision() == "fp32" and not runtime.tf32
    # on CUDA, amp none turns TF32 off in matmuls and cuDNN convolutions (torch leaves cuDNN's on)
    cuda = Runtime(device=torch.device("cuda"), amp_dtype=None, tf32=tf32_allowed("none"))
    auto = Runtime(device=torch.device("cuda"), amp_dtype=torch.bfloat16, tf32=tf32_allowed("auto"))
    assert cuda.exact_fp32 and cuda.precision() == "fp32, TF32 off" and not auto.exact_fp32
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        auto.apply_tf32()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        cuda.apply_tf32()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_mini_prose_quotes_the_datas_counts():
    data = describe_data(3, 12, 9)
    first = all_departures(MINI, "fp32", "fp32", "floor", data)[0].what
    assert first.startswith("data: 3 classes, 12 training / 9 validation images") and "4,000" not in first
    assert "3 classes, 12 training / 9 validation images" in fill_data(MINI.description, data)
    assert "{data}" not in fill_data(MINI.description, None)
    # bf16 named as a departure; exact fp32 on both sides is none
    whats = [d.what for d in all_departures(MINI, "bf16 autocast (fp32 weights), TF32 on", "fp32", "ceil")]
    assert whats[-2].startswith("precision: training in bf16") and "best.pt" in whats[-1]


def test_the_mini_report_says_its_choices_were_made_on_held_out_training_images():
    from verydeep.config import load_config
    from verydeep.reproduce.profiles import IMAGENET

    data = describe_data(10, 4000, 1500, 500)
    assert data == "10 classes, 4,000 training (500 of them held out for model selection) / 1,500 validation images"
    mini = all_departures(MINI, "fp32", "fp32", "floor", data)
    selection = [d.what for d in mini if d.what.startswith("each net is its best.pt")]
    assert selection == [d for d in selection if f"{MINI.holdout} training images of each class held out" in d]
    assert len(selection) == 1 and "not on the validation set" in selection[0]
    assert f"data.holdout={MINI.holdout}" in MINI.run_overrides("paper_A_S256", load_config("paper_A_S256"))
    # the settings themselves: each says it was chosen on held-out training images, with figures
    chosen = [d for d in mini if "held-out" in d.measured]
    assert {"init", "dropout", "plateau", "images at 32/224"} <= {
        w for d in chosen for w in ("init", "dropout", "plateau", "images at 32/224") if w in d.what}
    # the epochs were checked there too and are the paper's recipes' (up to 74, the plateau rule)
    from verydeep.reproduce.profiles import PAPER_CHAIN
    assert not any("train.epochs" in o for r in PAPER_CHAIN for o in MINI.run_overrides(r, load_config(r)))
    # the imagenet profile keeps the paper's protocol: selection on the validation set, a departure
    imagenet = [d.what for d in all_departures(IMAGENET, "fp32", "fp32", "ceil")]
    assert IMAGENET.holdout == 0 and any("on the validation set, the same images the tables report" in w
                                         for w in imagenet)
    assert "data.holdout=" not in " ".join(IMAGENET.run_overrides("paper_A_S256", load_config("paper_A_S256")))


def test_report_png_has_a_y_equals_x_line_and_labels_that_do_not_overlap():
    """Issue 19: overlapping labels and no y = x line. Ours equal to the paper's, slightly
    shifted: every cell near the diagonal, the densest case."""
    import matplotlib.pyplot as plt

    from verydeep.reproduce.report import figure_against_paper

    paper = paper_numbers()
    ours = {k: {"top1_error": v[0] + 0.1 * (i % 3)} for i, (k, v) in enumerate(paper.items())}
    fig = figure_against_paper(ours, paper)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        (diagonal,) = [line for line in ax.get_lines() if line.get_label().startswith("y = x")]
        xs, ys = diagonal.get_data()
        assert list(xs) == list(ys) and (xs[0], xs[-1]) == ax.get_xlim() == ax.get_ylim()
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(boxes) == len([k for k in paper if k[0] == int(ax.get_title().split()[1].rstrip(":"))])
        assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
        points = ax.transData.transform(ax.collections[0].get_offsets())
        assert not [(box, p) for box in boxes for p in points if box.contains(*p)]  # no label covers a point
        frame = ax.get_window_extent(renderer)
        assert all(frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1) for b in boxes)
    plt.close(fig)


def test_the_runs_table_names_the_images_model_selection_read():
    from verydeep.reproduce.report import runs_section

    assert "| best val top-1 (centre crop) |" in runs_section({})[0]
    assert "| best held-out top-1 (centre crop) |" in runs_section({}, "held-out")[0]
