
import pytest
import torch

from tests.evaluate.conftest import CLASSES, tiny_net, write_dataset
from verydeep.evaluate import EvalNet, EvalOptions, RowSpec, evaluate, evaluate_rows, resolve_scales
from verydeep.evaluate import protocols
from verydeep.evaluate.report import format_table, write_json, write_per_class, write_per_image

pytestmark = pytest.mark.usefixtures("no_grad")
QUIET = EvalOptions(progress=False)


def data_cfg(root, **kw):
    from verydeep.data import DataConfig

    base = dict(root=str(root), scale_min=32, scale_max=64, crop_size=32, workers=0,
                normalize="mean_std", index_cache=str(root / ".cache"))
    return DataConfig(**{**base, **kw})


def val_samples(cfg):
    from verydeep.data import discover

    splits = discover(cfg)
    return splits.val, splits.classes


def test_default_scales_follow_the_recipe():
    from types import SimpleNamespace as NS

    assert resolve_scales(NS(scale_min=256, scale_max=256), "single") == [256]
    assert resolve_scales(NS(scale_min=256, scale_max=256), "multi") == [224, 256, 288]
    assert resolve_scales(NS(scale_min=384, scale_max=384), "multi") == [352, 384, 416]
    assert resolve_scales(NS(scale_min=256, scale_max=512), "single") == [384]
    assert resolve_scales(NS(scale_min=256, scale_max=512), "multi") == [256, 384, 512]
    assert resolve_scales(NS(scale_min=64, scale_max=128), "multi") == [64, 96, 128]


def test_all_protocols_single_and_multi_scale(dataset):
    cfg = data_cfg(dataset)
    samples, classes = val_samples(cfg)
    assert len(samples) == 7
    # Q=24 is below the 32-px crop: centre and multi-crop pad, dense pads to the net's minimum.
    rows = [RowSpec(p, s) for s in ((32,), (24, 32, 48)) for p in protocols.PROTOCOLS]
    result = evaluate_rows(tiny_net(), cfg, samples, rows, classes=classes,
                           options=EvalOptions(batch_size=4, progress=False))
    assert len(result.rows) == 8
    for row in result.rows:
        assert row["images"] == 7 and row["bad_images"] == 0
        assert 0 <= row["top1_error"] <= 100 and 0 <= row["top5_error"] <= row["top1_error"]
        assert row["images_per_s"] > 0
        # Errors are whole images out of 7.
        assert row["top1_error"] * 7 / 100 == pytest.approx(round(row["top1_error"] * 7 / 100), abs=1e-6)
    # 3 classes: top-5 always right.
    assert all(r["top5_error"] == 0 for r in result.rows)
    assert "dense+multicrop" in format_table(result.rows)


def test_center_error_matches_a_hand_loop(dataset):
    from verydeep.data import eval_transform, load_image

    cfg = data_cfg(dataset)
    samples, classes = val_samples(cfg)
    model = tiny_net(1)
    row = evaluate(model, cfg, samples, protocol="center", scales=[40], classes=classes,
                   options=EvalOptions(flip=False, batch_size=3, progress=False))
    wrong = 0
    for path, label in samples:
        x = eval_transform(cfg, 40, 32)(load_image(path))[None]
        wrong += int(model(x).argmax(1).item() != label)
    assert row["top1_error"] == pytest.approx(100 * wrong / len(samples))
    assert row["scales"] == [40] and row["protocol"] == "center"


def test_multiscale_and_combination_are_averages_of_posteriors(dataset):
    cfg = data_cfg(dataset)
    samples, classes = val_samples(cfg)
    rows = [RowSpec("dense", (32,)), RowSpec("dense", (48,)), RowSpec("dense", (32, 48)),
            RowSpec("multicrop", (32, 48)), RowSpec("dense+multicrop", (32, 48))]
    res = evaluate_rows(tiny_net(2), cfg, samples, rows, classes=classes,
                        options=EvalOptions(batch_size=4, progress=False)).results
    # With 3 classes the full posterior is recoverable from the top-3 probs and indices.
    def full(r):
        out = torch.zeros(len(samples), 3)
        out.scatter_(1, r.top5, r.top5_prob)
        return out
    torch.testing.assert_close(full(res[2]), (full(res[0]) + full(res[1])) / 2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full(res[4]), (full(res[2]) + full(res[3])) / 2, atol=1e-5, rtol=1e-5)


def test_fusion_and_class_order(dataset):
    cfg = data_cfg(dataset)
    samples, classes = val_samples(cfg)
    a, b = tiny_net(3), tiny_net(4)
    spec = [RowSpec("center", (40,))]
    one = evaluate_rows(a, cfg, samples, spec, classes=classes, options=QUIET).results[0]
    # The same net twice fuses to itself.
    twice = evaluate_rows([a, a], cfg, samples, spec, classes=classes, options=QUIET).results[0]
    torch.testing.assert_close(twice.top5_prob, one.top5_prob)
    # A net listing its classes in reverse order (last layer permuted to match) agrees.
    rev = tiny_net(3)
    rev.classifier[6].weight.copy_(a.classifier[6].weight.flip(0))
    rev.classifier[6].bias.copy_(a.classifier[6].bias.flip(0))
    net = EvalNet(model=rev, data=cfg, classes=list(reversed(CLASSES)), source="reversed")
    r = evaluate_rows(net, cfg, samples, spec, classes=classes, options=QUIET).results[0]
    torch.testing.assert_close(r.top5_prob, one.top5_prob)
    assert torch.equal(r.top5, one.top5)
    # Fusion of two different nets: the mean of their posteriors.
    pb = evaluate_rows(b, cfg, samples, spec, classes=classes, options=QUIET).results[0]
    fused = evaluate_rows([a, b], cfg, samples, spec, classes=classes, options=QUIET).results[0]
    full = lambda res: torch.zeros(7, 3).scatter_(1, res.top5, res.top5_prob)  # noqa: E731
    torch.testing.assert_close(full(fused), (full(one) + full(pb)) / 2, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="missing"):
        evaluate_rows(EvalNet(model=a, data=cfg, classes=["x", "y", "z"]), cfg, samples, spec,
                      classes=classes, options=QUIET)


def test_undecodable_images_count_as_errors_and_are_reported(tmp_path):
    root = write_dataset(tmp_path / "data", corrupt=1)
    cfg = data_cfg(root)
    samples, classes = val_samples(cfg)
    assert len(samples) == 8
    res = evaluate_rows(tiny_net(), cfg, samples, [RowSpec("dense", (40,))], classes=classes,
                        options=QUIET)
    row = res.rows[0]
    assert row["images"] == 8 and row["bad_images"] == 1
    assert len(res.bad) == 1 and res.bad[0][1].endswith("broken_0.JPEG")
    assert row["top5_error"] == pytest.approx(100 / 8)  # 3 classes: only the bad image misses
    assert "undecodable" in format_table(res.rows)
    csv_rows = write_per_image(res, tmp_path / "pred.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 8 and any(line.endswith(",1") for line in csv_rows[1:])
    per_class = write_per_class(res, tmp_path / "cls.csv").read_text().splitlines()
    assert len(per_class) == 1 + 3 and per_class[1].startswith(CLASSES[0])
    import json

    rows = json.loads(write_json(res.rows, tmp_path / "rows.json").read_text())["rows"]
    assert set(rows[0]) >= {"protocol", "scales", "top1_error", "top5_error", "images", "images_per_s"}
