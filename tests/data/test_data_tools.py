"""check / stats / prepare / demo, through the `verydeep data` command layer."""

import argparse
import json

import numpy as np
from .conftest import WNIDS, write_class_folders, write_image
from PIL import Image

from verydeep.cli import data as data_cli
from verydeep.data import DEMO_CLASSES, DataConfig, discover, make_demo_dataset
from verydeep.data.stats import compute_stats


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    data_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def test_check_lists_bad_files(tmp_path, capsys):
    root = tmp_path / "ds"
    write_class_folders(root / "train", WNIDS[:2], per_class=2)
    good = write_image(tmp_path / "x.JPEG", 64, 64).read_bytes()
    (root / "train" / WNIDS[0] / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    (root / "train" / WNIDS[1] / "page.JPEG").write_text("<html></html>")
    write_image(root / "train" / WNIDS[1] / "cmyk.JPEG", mode="CMYK")
    rc = run_cli("check", "--data", str(root), "--workers", "0", "--index-cache", str(tmp_path / "c"))
    out = capsys.readouterr().out
    assert rc == 1
    assert "truncated.JPEG" in out and "page.JPEG" in out and "cmyk.JPEG" not in out
    assert "7 files checked, 2 unreadable" in out


def test_stats_recover_known_colour_distribution(tmp_path):
    # Pixels drawn along one RGB direction: the first principal component must be that direction.
    rng = np.random.default_rng(0)
    direction = np.array([0.8, 0.6, 0.0])
    paths = []
    for i in range(12):
        t = rng.uniform(-0.3, 0.3, (16, 16, 1))
        arr = np.clip(0.5 + t * direction, 0, 1) * 255
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(arr.round().astype(np.uint8)).save(paths[-1])
    s = compute_stats(paths, num_images=12, short_side=16, progress=False)
    assert np.allclose(s["mean"], [0.5, 0.5, 0.5], atol=0.02)
    v = np.array(s["pca_eigvec"])[:, 0]
    assert abs(abs(v @ direction) - 1) < 1e-3
    assert s["pca_eigval"][0] > 100 * s["pca_eigval"][1]
    assert np.allclose(s["pca_eigval"][0], 0.3 ** 2 / 3, rtol=0.15)  # var of U(-0.3, 0.3)


def test_stats_cli_writes_usable_file(tmp_path):
    root = tmp_path / "ds"
    write_class_folders(root / "train", WNIDS, per_class=2)
    out = tmp_path / "stats.json"
    assert run_cli("stats", "--data", str(root), "--images", "4", "--workers", "0", "--json", str(out)) == 0
    stats = json.loads(out.read_text())
    assert stats["images"] == 4 and len(stats["pca_eigvec"]) == 3
    from verydeep.data import normalization

    mean, _ = normalization(DataConfig(stats_file=str(out)))
    assert np.allclose(mean.numpy(), stats["mean"])


def test_prepare_caps_short_side_and_keeps_layout(tmp_path):
    src = tmp_path / "src"
    write_image(src / "train" / WNIDS[0] / "big.JPEG", 300, 200)
    write_image(src / "train" / WNIDS[0] / "small.JPEG", 60, 40)
    (src / "val").mkdir()
    write_image(src / "val" / "ILSVRC2012_val_00000001.JPEG", 120, 240)
    (src / "LOC_val_solution.csv").write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{WNIDS[0]}\n")
    (src / "train" / WNIDS[0] / "bad.JPEG").write_text("nope")
    dst = tmp_path / "dst"
    assert run_cli("prepare", "--data", str(src), "--out", str(dst), "--max-short-side", "100", "--workers", "0") == 0
    assert Image.open(dst / "train" / WNIDS[0] / "big.JPEG").size == (150, 100)
    assert Image.open(dst / "val" / "ILSVRC2012_val_00000001.JPEG").size == (100, 200)
    assert (dst / "train" / WNIDS[0] / "small.JPEG").read_bytes() == (src / "train" / WNIDS[0] / "small.JPEG").read_bytes()
    assert (dst / "train" / WNIDS[0] / "bad.JPEG").read_text() == "nope"
    s = discover(DataConfig(root=str(dst), index_cache=str(tmp_path / "c")))
    assert len(s.train) == 3 and s.val_layout == "kaggle_csv" and len(s.val) == 1
    from verydeep.data.prepare import prepare_dataset

    again = prepare_dataset(src, dst, max_short_side=100, progress=False)
    assert again["skipped"] == again["files"] == 5


def test_demo_dataset(tmp_path):
    a = make_demo_dataset(tmp_path / "a", seed=1, train_per_class=3, val_per_class=2, progress=False)
    assert a["classes"] == len(DEMO_CLASSES) >= 10
    s = discover(DataConfig(root=str(tmp_path / "a"), index_cache=str(tmp_path / "c")))
    assert s.val_layout == "kaggle_csv" and len(s.train) == 30 and len(s.val) == 20
    assert s.class_names[DEMO_CLASSES[0][0]] == "disc"
    assert sorted(np.bincount([label for _, label in s.val]).tolist()) == [2] * 10
    sizes = {Image.open(p).size for p, _ in s.train}
    assert len(sizes) > 15 and len({round(w / h, 1) for w, h in sizes}) > 5  # sizes and aspects vary
    # Deterministic by seed, different across seeds.
    make_demo_dataset(tmp_path / "b", seed=1, train_per_class=3, val_per_class=2, progress=False)
    make_demo_dataset(tmp_path / "c2", seed=2, train_per_class=3, val_per_class=2, progress=False)
    f = f"train/{DEMO_CLASSES[4][0]}/{DEMO_CLASSES[4][0]}_2.JPEG"
    assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / f).read_bytes() != (tmp_path / "c2" / f).read_bytes()
    assert (tmp_path / "a" / "LOC_val_solution.csv").read_text() == (tmp_path / "b" / "LOC_val_solution.csv").read_text()


def test_demo_object_scale_and_colour_independent_of_class():
    from verydeep.data.demo import render_demo_image

    spans, colours = [], {name: [] for _, name in DEMO_CLASSES[:2]}
    for i in range(60):
        name = DEMO_CLASSES[i % 2][1]
        img, (x0, y0, x1, y1) = render_demo_image(np.random.default_rng([9, i]), name)
        spans.append(max(x1 - x0, y1 - y0) / min(img.size))
        arr = np.asarray(img)
        colours[name].append(arr[(y0 + y1) // 2, (x0 + x1) // 2].astype(float))
    assert max(spans) / min(spans) >= 3.5  # object scale varies (about 4x by design)
    # Mean object-centre colour of the two classes is about the same (mid-grey): colour says nothing.
    means = [np.mean(v, 0) for v in colours.values()]
    assert np.abs(means[0] - means[1]).max() < 60


def test_the_alt_demo_classes_are_another_set(tmp_path):
    """The second generator (``--classes alt``): ten other shapes under other wnids, drawn the
    same way, written by the command line."""
    import subprocess
    import sys

    import pytest

    from verydeep.data import ALT_CLASSES, CLASS_SETS

    assert CLASS_SETS["shapes"] == DEMO_CLASSES and len(ALT_CLASSES) == len(DEMO_CLASSES)
    assert not {w for w, _ in ALT_CLASSES} & {w for w, _ in DEMO_CLASSES}
    assert not {n for _, n in ALT_CLASSES} & {n for _, n in DEMO_CLASSES}
    out = tmp_path / "alt"
    done = subprocess.run([sys.executable, "-m", "verydeep", "data", "demo", "--classes", "alt", "--out", str(out),
                           "--train-per-class", "2", "--val-per-class", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    s = discover(DataConfig(root=str(out), index_cache=str(tmp_path / "cache")))
    assert s.classes == sorted(w for w, _ in ALT_CLASSES) and len(s.train) == 20 and len(s.val) == 10
    assert s.class_names[ALT_CLASSES[0][0]] == "pentagon"
    with pytest.raises(ValueError, match="demo classes 'nope'"):
        make_demo_dataset(tmp_path / "x", classes="nope")
