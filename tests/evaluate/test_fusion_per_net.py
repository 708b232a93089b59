"""Fusion as the paper's ensembles need it (Sec. 4.5, Table 6): each net at its own test scales,
and fusion of stored posteriors without re-running the nets. Checked against averages of
posteriors computed by hand, image by image."""

import json
import shutil

import numpy as np
import pytest
import torch

from tests.evaluate.conftest import CLASSES, tiny_net
from tests.evaluate.test_evaluator import data_cfg, val_samples
from verydeep.data import eval_transform, load_image
from verydeep.evaluate import EvalNet, EvalOptions, RowSpec, evaluate_rows
from verydeep.errors import CheckpointError
from verydeep.evaluate.posterior_store import PosteriorStore
from verydeep.evaluate.store_fusion import fuse_stores

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


def test_fusion_of_saved_stores(dataset, tmp_path):
    cfg = data_cfg(dataset)
    samples, classes = val_samples(cfg)
    a, b = tiny_net(7), tiny_net(8)
    stores = []
    for name, model, q in (("a", a, 32), ("b", b, 48)):
        result = evaluate_rows(model, cfg, samples, [RowSpec("center", (q,)), RowSpec("dense", (q,))],
                               classes=classes, options=NO_FLIP, save_posteriors=tmp_path / name)
        assert result.store == tmp_path / name
        stores.append(result.store)
    saved_a = PosteriorStore.open(stores[0])
    # the store holds each (net, method, Q)'s full K-way posteriors, the labels and the class order
    assert sorted(saved_a.index["entries"]) == ["net0-center-Q32", "net0-dense-Q32"] and saved_a.classes == classes
    torch.testing.assert_close(saved_a.read("net0-center-Q32", np.arange(7)), by_hand(a, cfg, samples, 32),
                               atol=1e-5, rtol=1e-4)
    assert saved_a.labels().tolist() == [label for _, label in samples]
    assert [r["nets"] for r in saved_a.rows] == [[["net0-center-Q32"]], [["net0-dense-Q32"]]]
    row, members, fused = fuse_stores([f"{stores[0]}#0", f"{stores[1]}#0"], keep=True)
    expected = (by_hand(a, cfg, samples, 32) + by_hand(b, cfg, samples, 48)) / 2
    torch.testing.assert_close(fused.posteriors, expected, atol=1e-5, rtol=1e-4)
    wrong = (expected.argmax(1) != torch.tensor([label for _, label in samples])).sum().item()
    assert row["top1_error"] == pytest.approx(100 * wrong / 7) and row["net_scales"] == [[32], [48]]
    assert [m["top1_error"] for m in members] == [PosteriorStore.open(s).rows[0]["row"]["top1_error"] for s in stores]
    # the same as fusing in the evaluator (same Q for both here), and the same picked by entry
    both = evaluate_rows([a, b], cfg, samples, [RowSpec("center", (32, 48), ((32,), (48,)))], classes=classes,
                         options=NO_FLIP, keep_posteriors=True).results[0]
    torch.testing.assert_close(fused.posteriors, both.posteriors, atol=1e-6, rtol=1e-5)
    by_entry = fuse_stores([f"{stores[0]}#net0-center-Q32", f"{stores[1]}#net0-center-Q48"], keep=True)[2]
    assert torch.equal(by_entry.posteriors, fused.posteriors)
    with pytest.raises(CheckpointError, match="holds 2 rows"):
        fuse_stores([str(stores[0])])
    with pytest.raises(CheckpointError, match="no row or entry 'net0-dense-Q48'"):
        fuse_stores([f"{stores[0]}#net0-dense-Q48"])


def test_saved_stores_fuse_across_class_and_image_orders(dataset, tmp_path):
    cfg = data_cfg(dataset)
    samples, classes = val_samples(cfg)
    res = evaluate_rows(tiny_net(9), cfg, samples, [RowSpec("center", (40,))], classes=classes, options=NO_FLIP,
                        save_posteriors=tmp_path / "one", keep_posteriors=True)
    # the same store written with its classes and images in reverse order
    shutil.copytree(tmp_path / "one", tmp_path / "flipped")
    index = json.loads((tmp_path / "flipped" / "index.json").read_text())
    index.update(classes=index["classes"][::-1], samples=index["samples"][::-1],
                 labels=[2 - label for label in index["labels"][::-1]])
    (tmp_path / "flipped" / "index.json").write_text(json.dumps(index))
    array = np.load(tmp_path / "one" / "net0-center-Q40.npy")
    np.save(tmp_path / "flipped" / "net0-center-Q40.npy", np.ascontiguousarray(array[::-1, ::-1]))
    _, _, fused = fuse_stores([str(tmp_path / "one"), str(tmp_path / "flipped")], keep=True)
    torch.testing.assert_close(fused.posteriors, res.results[0].posteriors)
    # a store that labels an image otherwise is refused
    index["labels"][0] = (index["labels"][0] + 1) % 3
    (tmp_path / "flipped" / "index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="fusion needs the same labels"):
        fuse_stores([str(tmp_path / "one"), str(tmp_path / "flipped")])


def test_eval_saves_posteriors_and_fuse_averages_the_files(dataset, tmp_path, capsys):
    from tests.evaluate.test_cli import NAMES, save_run
    from verydeep.cli.main import main
    from verydeep.data import discover

    cfg = data_cfg(dataset)
    runs = [save_run(tmp_path / f"run{i}", tiny_net(10 + i), cfg, CLASSES, NAMES) for i in range(2)]
    files = []
    for i, run in enumerate(runs):
        files.append(tmp_path / f"net{i}")
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
