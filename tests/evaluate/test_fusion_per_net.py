"""Fusion as the paper's ensembles need it (Sec. 4.5, Table 6): each net at its own test scales,
and fusion of saved posteriors without re-running the nets. Checked against averages of
posteriors computed by hand, image by image."""

import json

import pytest
import torch

from tests.evaluate.conftest import CLASSES, tiny_net
from tests.evaluate.test_evaluator import data_cfg, val_samples
from verydeep.data import eval_transform, load_image
from verydeep.evaluate import EvalNet, EvalOptions, RowSpec, evaluate_rows
from verydeep.evaluate.posteriors_file import (
    fuse_saved,
    load_posteriors,
    save_posteriors,
)

pytestmark = pytest.mark.usefixtures("no_grad")
NO_FLIP = EvalOptions(flip=False, progress=False)


def rows_of(path):
    """The rows of a JSON table as the CLI writes it (a list, or a header and its rows)."""
    written = json.loads(path.read_text())
    return written["rows"] if isinstance(written, dict) else written


def by_hand(model, cfg, samples, q):
    """Centre-crop posteriors of every image at test scale ``q``, one image at a time."""
    return torch.stack([torch.softmax(model(eval_transform(cfg, q, 32)(load_image(p))[None]), 1)[0]
                        for p, _ in samples])


def test_each_net_at_its_own_scales(dataset):
    cfg = data_cfg(dataset)
    samples, classes = val_samples(cfg)
    a, b = tiny_net(3), tiny_net(4)
    pa = {q: by_hand(a, cfg, samples, q) for q in (32, 48)}
    pb = {q: by_hand(b, cfg, samples, q) for q in (40,)}
    rows = [RowSpec("center", (32, 40, 48), ((32,), (40,))),  # one scale each
            RowSpec("center", (32, 40, 48), ((32, 48), (40,)))]  # two scales for a, one for b
    res = evaluate_rows([a, b], cfg, samples, rows, classes=classes, options=NO_FLIP, keep_posteriors=True)
    torch.testing.assert_close(res.results[0].posteriors, (pa[32] + pb[40]) / 2, atol=1e-5, rtol=1e-4)
    # each net's own mean over its scales first, then the nets' mean: a's two scales weigh as b's one
    torch.testing.assert_close(res.results[1].posteriors, ((pa[32] + pa[48]) / 2 + pb[40]) / 2, atol=1e-5, rtol=1e-4)
    assert res.rows[1]["scales"] == [32, 40, 48] and res.rows[1]["net_scales"] == [[32, 48], [40]]
    with pytest.raises(ValueError, match="for 2 nets but 3"):
        evaluate_rows([a, b, a], cfg, samples, rows[:1], classes=classes, options=NO_FLIP)


def test_single_and_multi_follow_each_nets_training_scale(dataset):
    cfg = data_cfg(dataset)  # jittered S in [32, 64]: Q = 48, or 32, 48, 64
    fixed = data_cfg(dataset, scale_min=40, scale_max=40)  # fixed S = 40: Q = 40, or 35, 40, 45 (32 x 32/224 = 5 for crop 32)
    single = RowSpec.for_nets("dense", [cfg, fixed], "single")
    assert single.net_scales == ((48,), (40,)) and single.scales == (40, 48)
    assert RowSpec.for_nets("dense", [cfg, fixed], "multi").net_scales == ((32, 48, 64), (35, 40, 45))
    assert RowSpec.for_nets("dense", [cfg, cfg], "multi") == RowSpec("dense", (32, 48, 64))
    assert RowSpec.for_nets("dense", [cfg, fixed], [[32], [40, 48]]).net_scales == ((32,), (40, 48))
    samples, classes = val_samples(cfg)
    a, b = tiny_net(5), tiny_net(6)
    nets = [EvalNet(model=a, data=cfg), EvalNet(model=b, data=fixed)]
    (r,) = evaluate_rows(nets, cfg, samples, [RowSpec.for_nets("center", [cfg, fixed], "single")],
                         classes=classes, options=NO_FLIP, keep_posteriors=True).results
    torch.testing.assert_close(r.posteriors, (by_hand(a, cfg, samples, 48) + by_hand(b, fixed, samples, 40)) / 2,
                               atol=1e-5, rtol=1e-4)


def test_fusion_of_saved_posterior_files(dataset, tmp_path):
    cfg = data_cfg(dataset)
    samples, classes = val_samples(cfg)
    a, b = tiny_net(7), tiny_net(8)
    files = []
    for name, model, q in (("a", a, 32), ("b", b, 48)):
        result = evaluate_rows(model, cfg, samples, [RowSpec("center", (q,)), RowSpec("dense", (q,))],
                               classes=classes, options=NO_FLIP, keep_posteriors=True)
        files.append(save_posteriors(result, tmp_path / f"{name}.safetensors"))
    saved_a = load_posteriors(f"{files[0]}#0")
    # the file holds the full K-way posteriors, labels and class order
    assert saved_a.posteriors.shape == (7, 3) and saved_a.classes == classes
    torch.testing.assert_close(saved_a.posteriors, by_hand(a, cfg, samples, 32), atol=1e-5, rtol=1e-4)
    assert saved_a.labels.tolist() == [label for _, label in samples]
    row, fused = fuse_saved([saved_a, load_posteriors(f"{files[1]}#0")])
    expected = (by_hand(a, cfg, samples, 32) + by_hand(b, cfg, samples, 48)) / 2
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-4)
    wrong = (expected.argmax(1) != torch.tensor([label for _, label in samples])).sum().item()
    assert row["top1_error"] == pytest.approx(100 * wrong / 7) and row["net_scales"] == [[32], [48]]
    # the same as fusing in the evaluator (same Q for both here)
    both = evaluate_rows([a, b], cfg, samples, [RowSpec("center", (32, 48), ((32,), (48,)))], classes=classes,
                         options=NO_FLIP, keep_posteriors=True).results[0]
    torch.testing.assert_close(fused, both.posteriors, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="holds 2 rows"):
        load_posteriors(files[0])


def test_saved_files_fuse_across_class_orders(dataset, tmp_path):
    cfg = data_cfg(dataset)
    samples, classes = val_samples(cfg)
    a = tiny_net(9)
    res = evaluate_rows(a, cfg, samples, [RowSpec("center", (40,))], classes=classes, options=NO_FLIP,
                        keep_posteriors=True)
    one = load_posteriors(save_posteriors(res, tmp_path / "a.safetensors"))
    flipped = load_posteriors(save_posteriors(res, tmp_path / "b.safetensors"))
    flipped.classes, flipped.posteriors = flipped.classes[::-1], flipped.posteriors.flip(1)
    flipped.samples, flipped.posteriors = flipped.samples[::-1], flipped.posteriors.flip(0)
    flipped.labels, flipped.undecodable = flipped.labels.flip(0), flipped.undecodable.flip(0)
    _, fused = fuse_saved([one, flipped])
    torch.testing.assert_close(fused, one.posteriors)


def test_eval_saves_posteriors_and_fuse_averages_the_files(dataset, tmp_path, capsys):
    from tests.evaluate.test_cli import NAMES, save_run
    from verydeep.cli.main import main
    from verydeep.data import discover

    cfg = data_cfg(dataset)
    runs = [save_run(tmp_path / f"run{i}", tiny_net(10 + i), cfg, CLASSES, NAMES) for i in range(2)]
    files = []
    for i, run in enumerate(runs):
        files.append(tmp_path / f"net{i}.safetensors")
        assert main(["eval", "--checkpoint", str(run), "--data", str(dataset), "--protocol", "center",
                     "--scales", "40", "--no-flip", "--device", "cpu", "--save-posteriors", str(files[-1])]) == 0
    assert main(["fuse", *map(str, files), "--json", str(tmp_path / "fused.json")]) == 0
    assert "2 posteriors fused" in capsys.readouterr().out
    (row,) = rows_of(tmp_path / "fused.json")
    samples = discover(cfg).val
    expected = (by_hand(tiny_net(10), cfg, samples, 40) + by_hand(tiny_net(11), cfg, samples, 40)) / 2
    wrong = (expected.argmax(1) != torch.tensor([label for _, label in samples])).sum().item()
    assert row["top1_error"] == pytest.approx(100 * wrong / len(samples), abs=1e-3) and row["images"] == len(samples)
    # one net per --checkpoint at its own scales, through the CLI: "Q/Q" lists
    assert main(["eval", "--checkpoint", str(runs[0]), "--checkpoint", str(runs[1]), "--data", str(dataset),
                 "--protocol", "center", "--scales", "40/48", "--no-flip", "--device", "cpu",
                 "--json", str(tmp_path / "per_net.json")]) == 0
    (row,) = rows_of(tmp_path / "per_net.json")
    assert row["net_scales"] == [[40], [48]]
