"""The file index under odd file systems: symlink loops and links into other classes, FIFOs
named like images, changes deep inside class folders; and EXIF orientation."""

import multiprocessing
import os
import time

import pytest
from .conftest import WNIDS, write_class_folders, write_image
from PIL import Image

from verydeep.cli.main import main
from verydeep.data import BadImageError, discover, load_image
from verydeep.data.check import check_path
from verydeep.data.index_cache import scan_folder, walk_images

FORK = multiprocessing.get_context("fork")


def _labels(splits):
    counts = {}
    for path, label in splits.train:
        counts.setdefault(splits.classes[label], []).append(path)
    return counts


def test_a_symlink_loop_neither_multiplies_nor_mislabels_images(train_root, cfg_for, caplog):
    cls = train_root / "train" / WNIDS[0]
    os.symlink("..", cls / "loop")  # back up to train/: every class again, under WNIDS[0]
    os.symlink(f"../{WNIDS[1]}", train_root / "train" / WNIDS[2] / "borrowed")  # another class's folder
    splits = discover(cfg_for(train_root))
    by_class = _labels(splits)
    assert {c: len(v) for c, v in by_class.items()} == dict.fromkeys(WNIDS, 3)
    assert all(os.path.dirname(p).endswith(c) for c, paths in by_class.items() for p in paths)
    skipped = dict(splits.problems)
    assert "symlink loop" in skipped[str(cls / "loop")]
    assert str(train_root / "train" / WNIDS[2] / "borrowed") in skipped
    assert "symlink loop or duplicate folder" in caplog.text  # data info and train warn


def test_a_duplicate_class_folder_is_reported(tmp_path):
    d = tmp_path / "train"
    write_class_folders(d, WNIDS[:2], per_class=2)
    os.symlink(WNIDS[0], d / "n99999999")
    index = scan_folder(d, tmp_path / "cache")
    assert sorted(index.classes) == WNIDS[:2]
    assert index.problems[0][0] == str(d / "n99999999")


def test_data_check_lists_loops_and_fifos_and_exits_non_zero(train_root, cfg_for, capsys):
    os.symlink("..", train_root / "train" / WNIDS[0] / "loop")
    fifo = train_root / "train" / WNIDS[1] / "pipe.JPEG"
    os.mkfifo(fifo)
    result = check_path(train_root, index_cache=cfg_for(train_root).index_cache, progress=False)
    reasons = dict(result["bad"])
    assert "not a regular file" in reasons[str(fifo)] and result["images"] == 9
    assert main(["data", "check", "--data", str(train_root), "--workers", "0", "--index-cache",
                 cfg_for(train_root).index_cache]) == 1
    out = capsys.readouterr().out
    assert f"BAD {fifo}: not a regular file" in out and "loop" in out
    files, problems = walk_images(train_root / "train")  # any folder of images, not only datasets
    assert len(files) == 9 and {p for p, _ in problems} == {str(fifo), str(train_root / "train" / WNIDS[0] / "loop")}


def _discover_and_decode(root, cache):
    from verydeep.data import DataConfig

    splits = discover(DataConfig(root=str(root), index_cache=cache, workers=0))
    for path, _ in splits.train:
        load_image(path)
    os._exit(0)


def test_a_fifo_named_like_an_image_does_not_block_training_data(train_root, tmp_path):
    fifo = train_root / "train" / WNIDS[1] / "zz.JPEG"
    os.mkfifo(fifo)
    p = FORK.Process(target=_discover_and_decode, args=(train_root, str(tmp_path / "cache")))
    p.start()
    p.join(timeout=30)
    if p.exitcode is None:
        p.kill()
        pytest.fail("listing or decoding blocked on a FIFO")
    assert p.exitcode == 0
    with pytest.raises(BadImageError, match="not a regular file"):
        load_image(fifo)  # a path given directly (predict, a stale index) fails at once too


def test_the_index_notices_changes_in_nested_folders(tmp_path):
    d = tmp_path / "train"
    write_image(d / WNIDS[0] / "a.JPEG")
    write_image(d / WNIDS[0] / "deep" / "er" / "b.JPEG")
    write_image(d / WNIDS[0] / "deep" / "er" / "c.JPEG")
    cache = tmp_path / "cache"
    assert scan_folder(d, cache).num_images == 3
    assert scan_folder(d, cache).from_cache
    time.sleep(0.01)
    (d / WNIDS[0] / "deep" / "er" / "c.JPEG").unlink()  # changes only deep/er's mtime
    again = scan_folder(d, cache)
    assert not again.from_cache and again.classes[WNIDS[0]] == ["a.JPEG", os.path.join("deep", "er", "b.JPEG")]


def _exif_rotated_jpeg(path):
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    img.paste((0, 0, 200), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(path, exif=exif.tobytes(), quality=95)
    return path


def test_exif_orientation_ignored_for_datasets_and_honoured_on_request(tmp_path):
    path = _exif_rotated_jpeg(tmp_path / "phone.jpg")
    as_stored = load_image(path)
    assert as_stored.size == (40, 20)
    upright = load_image(path, exif_orientation=True)
    assert upright.size == (20, 40) and upright.info["original_size"] == (20, 40)
    assert upright.getpixel((10, 5))[2] > 150  # the blue half is on top after a clockwise turn
    drafted = load_image(path, min_short_side=8, exif_orientation=True)
    assert drafted.info["original_size"] == (20, 40)


@pytest.mark.parametrize("link", ["n00000000", "n99999999"])  # sorts before / after its target
def test_a_class_folder_linked_to_another_cannot_steal_it(tmp_path, caplog, link):
    from verydeep.data import DataConfig

    d = tmp_path / "train"
    write_class_folders(d, WNIDS[:2], per_class=2)
    os.symlink(WNIDS[1], d / link)
    splits = discover(DataConfig(train_dir=str(d), index_cache=str(tmp_path / "cache"), workers=0))
    assert splits.classes == WNIDS[:2]  # the real folder keeps its name; the link is no class
    assert {c: sorted(os.path.basename(os.path.dirname(p)) for p in v) for c, v in _labels(splits).items()} == {
        WNIDS[0]: [WNIDS[0]] * 2, WNIDS[1]: [WNIDS[1]] * 2}
    assert dict(splits.problems) == {str(d / link): f"links to {d / WNIDS[1]}, already indexed "
                                                    "(symlink loop or duplicate folder): skipped"}
    assert f"{d / link}: links to {d / WNIDS[1]}" in caplog.text  # the warning names the link, then its target
