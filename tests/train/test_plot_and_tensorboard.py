"""What people read of a run: curves.png (epoch axis, best checkpoint, LR axis, title) and the
TensorBoard tags."""

import json
import math

import yaml

from verydeep.train.metrics import MetricsLog
from verydeep.train.plot import best_record, lr_axis_scale, plot_run, run_title, steps_per_epoch


def write_run(run_dir, schedule="cosine", epochs=6, per_epoch=10):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({
        "recipe": "demo", "model": {"name": "vgg11_bn", "width": 0.125},
        "data": {"root": "data/demo", "scale_min": 64, "scale_max": 96}}))
    log = MetricsLog(run_dir, tensorboard=True)
    total = epochs * per_epoch
    errors = [60, 40, 30, 32, 25, 27][:epochs]
    for step in range(1, total + 1):
        if schedule == "cosine":
            lr = 0.5 * 0.1 * (1 + math.cos(math.pi * step / total))
        else:
            lr = 0.01 * 0.1 ** (step // (2 * per_epoch))
        log.scalar("lr", lr, step)
        if step % 5 == 0:
            log.write({"kind": "train", "epoch": (step - 1) // per_epoch + 1, "step": step, "loss": 2.0 / step ** 0.3,
                       "lr": lr, "images_per_s": 100.0, "skipped": 0})
        if step % per_epoch == 0:
            e = step // per_epoch  # numbered from 1, as the loop writes them
            log.write({"kind": "val", "epoch": e, "step": step, "val_loss": errors[e - 1] / 30,
                       "val_top1_error": errors[e - 1], "val_top5_error": errors[e - 1] / 3, "val_images": 100,
                       "val_bad_images": 0,
                       "ema_val_loss": 1.0, "ema_val_top1_error": errors[e - 1] - 1, "ema_val_top5_error": 1.0,
                       "tag": "epoch"})
            log.write({"kind": "epoch", "epoch": e, "step": step, "bad_files": 0})
    log.close()
    return run_dir


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_epoch_axis_the_best_checkpoint_and_the_title(tmp_path):
    run = write_run(tmp_path / "run")
    recs = records(run)
    assert steps_per_epoch(recs) == 10
    best = best_record([r for r in recs if r["kind"] == "val"])
    assert best["epoch"] == 5 and best["val_top1_error"] == 25  # the lowest: what best.pt holds
    assert run_title(run) == "vgg11_bn at width 1/8  |  recipe demo  |  data data/demo (S=64-96)"
    png = plot_run(run)
    assert png == run / "curves.png" and png.stat().st_size > 10_000
    assert plot_run(run, tmp_path / "elsewhere.png").is_file()


def test_an_iteration_cap_mid_epoch_keeps_the_epoch_axis():
    recs = [{"kind": "epoch", "epoch": 1, "step": 10}, {"kind": "epoch", "epoch": 2, "step": 20},
            {"kind": "epoch", "epoch": 3, "step": 24}]  # stopped by train.max_iterations in epoch 3
    assert steps_per_epoch(recs) == 10
    # a file written before epochs were numbered from 1 (its first epoch is 0)
    assert steps_per_epoch([{**r, "epoch": r["epoch"] - 1} for r in recs]) == 10
    assert steps_per_epoch([]) is None


def test_a_cosine_lr_axis_is_linear_and_a_step_schedule_logarithmic(tmp_path):
    cosine = [0.5 * 0.1 * (1 + math.cos(math.pi * s / 1000)) for s in range(1, 1000)]
    assert max(cosine) / min(cosine) > 1e5  # a log axis would span more than five decades
    assert lr_axis_scale(cosine) == "linear"
    assert lr_axis_scale([0.01] * 50 + [0.001] * 50 + [0.0001] * 50) == "log"
    assert lr_axis_scale([0.1, 0.0, 0.0]) == "linear"
    plot_run(write_run(tmp_path / "plateau", schedule="plateau"))


def test_tensorboard_tags_are_single_and_train_and_val_share_charts(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = write_run(tmp_path / "run")
    tags = {}
    for series in ("train", "val", "val_ema"):
        events = EventAccumulator(str(run / "tensorboard" / series))
        events.Reload()
        tags[series] = set(events.Tags()["scalars"])
    assert {"loss", "lr", "images_per_s"} <= tags["train"]
    assert {"loss", "top1_error", "top5_error"} <= tags["val"] and {"loss", "top1_error"} <= tags["val_ema"]
    assert "lr" not in tags["val"] and not any("val_" in t or "/" in t for s in tags.values() for t in s)
    events = EventAccumulator(str(run / "tensorboard" / "train"))
    events.Reload()
    assert len(events.Scalars("lr")) == 60  # once per step, not again from the train records


def test_epochs_are_numbered_from_1_in_the_log_metrics_and_bar(tiny_imagenet, tmp_path, caplog, capsys):
    """One numbering everywhere (issue 19: 1-based in the bar, 0-based in the log and metrics),
    and each epoch leaves one line: loss, error, images/s, time."""
    import logging
    import re

    from verydeep.config import load_config
    from verydeep.train.loop import train

    from .conftest import TINY_OVERRIDES

    cfg = load_config(None, [*TINY_OVERRIDES, f"data.root={tiny_imagenet}", "train.plot=false"])
    with caplog.at_level(logging.INFO, logger="verydeep"):
        train(cfg, tmp_path / "run")  # 2 epochs of 4 steps
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2 (step 4)", "epoch 2/2 (step 8)"]
    assert all(re.search(r"train loss \d\.\d{4} \| val loss \d\.\d{4}, top-1 error [\d.]+%, top-5 error [\d.]+% "
                         r"\| \d+ images/s, [\d.]+ s$", line) for line in lines)
    recs = records(tmp_path / "run")
    assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == [1, 2]
    assert [r["epoch"] for r in recs if r["kind"] == "val"] == [1, 2]
    assert sorted({r["epoch"] for r in recs if r["kind"] == "train"}) == [1, 2]
    assert {(r["epoch"], r["step"]) for r in recs if r["kind"] == "train"} >= {(1, 4), (2, 8)}
    bars = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert {line.split(":")[0] for line in bars} == {"epoch 1/2", "epoch 2/2"}  # the bar's own numbering
    assert len(bars) == len(set(bars))  # piped: no line repeated
