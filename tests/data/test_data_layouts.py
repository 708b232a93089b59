"""Each validation layout parsed on files written here; each bad-input case names its culprit."""

import os
import time

import pytest
from .conftest import WNIDS, write_class_folders, write_flat_val, write_image

from verydeep.data import DataError, discover
from verydeep.data.index_cache import scan_folder


def test_class_folder_layout_and_sorted_class_index(train_root, cfg_for):
    # Class folders written out of order: the index must still be the sorted wnid order.
    write_class_folders(train_root / "val", [WNIDS[2], WNIDS[0]], per_class=2)
    s = discover(cfg_for(train_root))
    assert s.val_layout == "class_folders"
    assert s.classes == sorted(WNIDS)
    assert len(s.train) == 9 and len(s.val) == 4
    for path, label in s.train + s.val:
        assert os.path.basename(os.path.dirname(path)) == s.classes[label]
        assert os.path.isfile(path)


def test_kaggle_csv_layout_with_names(train_root, cfg_for):
    write_flat_val(train_root / "val", 4)
    truth = {1: WNIDS[2], 2: WNIDS[0], 3: WNIDS[1], 4: WNIDS[2]}
    rows = [f"ILSVRC2012_val_{k:08d},{w} 1 2 30 25 {WNIDS[0]} 0 0 5 5" for k, w in truth.items()]
    (train_root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    (train_root / "LOC_synset_mapping.txt").write_text(
        f"{WNIDS[0]} tench, Tinca tinca\n{WNIDS[1]} goldfish, Carassius auratus\n{WNIDS[2]} great white shark\n")
    s = discover(cfg_for(train_root))
    assert s.val_layout == "kaggle_csv"
    got = {int(os.path.basename(p)[15:23]): s.classes[label] for p, label in s.val}
    assert got == truth  # the first token of PredictionString is the wnid
    assert s.class_names[WNIDS[0]] == "tench, Tinca tinca"
    assert s.class_names[WNIDS[2]] == "great white shark"


def test_devkit_layout(train_root, cfg_for):
    write_flat_val(train_root / "val", 3)
    # Devkit ids are not in sorted-wnid order: id 1 = WNIDS[2], id 2 = WNIDS[0], id 3 = WNIDS[1].
    (train_root / "ILSVRC2012_id_to_wnid.txt").write_text(f"1 {WNIDS[2]} shark\n2 {WNIDS[0]} tench\n3 {WNIDS[1]}\n")
    (train_root / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n3\n")
    s = discover(cfg_for(train_root))
    assert s.val_layout == "devkit"
    assert [s.classes[label] for _, label in s.val] == [WNIDS[0], WNIDS[2], WNIDS[1]]
    assert [os.path.basename(p) for p, _ in s.val] == [f"ILSVRC2012_val_{k:08d}.JPEG" for k in (1, 2, 3)]
    assert s.class_names[WNIDS[2]] == "shark"


def test_devkit_mapping_one_wnid_per_line(train_root, cfg_for, tmp_path):
    write_flat_val(train_root / "val", 2)
    mapping = tmp_path / "ids.txt"
    mapping.write_text(f"{WNIDS[1]}\n{WNIDS[0]}\n{WNIDS[2]}\n")  # line number = ILSVRC id
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("3\n1\n")
    s = discover(cfg_for(train_root, val_labels=str(gt), val_synsets=str(mapping)))
    assert [s.classes[label] for _, label in s.val] == [WNIDS[2], WNIDS[1]]


def test_wnid_list_layout(train_root, cfg_for, tmp_path):
    write_flat_val(train_root / "val", 3)
    labels = tmp_path / "imagenet_2012_validation_synset_labels.txt"
    labels.write_text(f"{WNIDS[1]}\n{WNIDS[1]}\n{WNIDS[0]}\n")
    s = discover(cfg_for(train_root, val_labels=str(labels)))
    assert s.val_layout == "wnid_list"
    assert [label for _, label in s.val] == [1, 1, 0]


def test_kaggle_subfolder_layout(tmp_path, cfg_for):
    base = tmp_path / "kaggle" / "ILSVRC" / "Data" / "CLS-LOC"
    write_class_folders(base / "train", WNIDS[:2], per_class=2)
    write_flat_val(base / "val", 2)
    (tmp_path / "kaggle" / "LOC_val_solution.csv").write_text(
        f"ImageId,PredictionString\nILSVRC2012_val_00000001,{WNIDS[1]} 1 1 2 2\nILSVRC2012_val_00000002,{WNIDS[0]}\n")
    s = discover(cfg_for(tmp_path / "kaggle"))
    assert [label for _, label in s.val] == [1, 0] and len(s.train) == 4


# ----------------------------------------------------------------------------- bad input


def test_empty_train_folder(tmp_path, cfg_for):
    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train: no class folders"):
        discover(cfg_for(tmp_path / "d"))


def test_empty_class_folder_named(train_root, cfg_for):
    (train_root / "train" / "n09999999").mkdir()
    with pytest.raises(DataError, match=r"n09999999: empty class folder"):
        discover(cfg_for(train_root))


def test_val_class_not_in_train(train_root, cfg_for):
    write_class_folders(train_root / "val", [WNIDS[0], "n07777777"], per_class=1)
    with pytest.raises(DataError, match=r"val/n07777777: validation class 'n07777777' is not a class"):
        discover(cfg_for(train_root))


def test_csv_names_missing_image_with_line(train_root, cfg_for):
    write_flat_val(train_root / "val", 2)
    csv = train_root / "LOC_val_solution.csv"
    csv.write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{WNIDS[0]}\n"
                   f"ILSVRC2012_val_00000009,{WNIDS[1]}\nILSVRC2012_val_00000002,{WNIDS[1]}\n")
    with pytest.raises(DataError, match=rf"{csv}:3: image ILSVRC2012_val_00000009 not found"):
        discover(cfg_for(train_root))


def test_csv_unknown_wnid_with_line(train_root, cfg_for):
    write_flat_val(train_root / "val", 2)
    csv = train_root / "LOC_val_solution.csv"
    csv.write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{WNIDS[0]}\nILSVRC2012_val_00000002,n12345678 1 2 3 4\n")
    with pytest.raises(DataError, match=rf"{csv}:3: wnid 'n12345678' is not a class of the training set"):
        discover(cfg_for(train_root))


def test_csv_bad_header(train_root, cfg_for):
    write_flat_val(train_root / "val", 1)
    csv = train_root / "LOC_val_solution.csv"
    csv.write_text(f"image,label\nILSVRC2012_val_00000001,{WNIDS[0]}\n")
    with pytest.raises(DataError, match=rf"{csv}:1: expected the header"):
        discover(cfg_for(train_root))


def test_devkit_unknown_id_and_missing_image(train_root, cfg_for):
    write_flat_val(train_root / "val", 2)
    (train_root / "ILSVRC2012_id_to_wnid.txt").write_text(f"1 {WNIDS[0]}\n2 {WNIDS[1]}\n")
    gt = train_root / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("1\n7\n")
    with pytest.raises(DataError, match=rf"{gt}:2: ILSVRC id 7 is not in the mapping"):
        discover(cfg_for(train_root))
    gt.write_text("1\n2\n2\n")  # three labels, two images
    with pytest.raises(DataError, match=rf"{gt}:3: image ILSVRC2012_val_00000003 not found"):
        discover(cfg_for(train_root))


def test_devkit_without_mapping_says_what_is_missing(train_root, cfg_for):
    write_flat_val(train_root / "val", 1)
    (train_root / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n")
    with pytest.raises(DataError, match="set data.val_synsets"):
        discover(cfg_for(train_root))


def test_flat_val_without_ground_truth(train_root, cfg_for):
    write_flat_val(train_root / "val", 2)
    with pytest.raises(DataError, match="no ground truth was found"):
        discover(cfg_for(train_root))


def test_ambiguous_ground_truth(train_root, cfg_for):
    write_flat_val(train_root / "val", 1)
    (train_root / "LOC_val_solution.csv").write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000001,{WNIDS[0]}\n")
    (train_root / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n")
    with pytest.raises(DataError, match="set data.val_labels"):
        discover(cfg_for(train_root))


def test_missing_root(tmp_path, cfg_for):
    with pytest.raises(DataError, match="is not a folder"):
        discover(cfg_for(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- index cache


def test_index_cache_reused_and_invalidated(tmp_path):
    d = tmp_path / "train"
    write_class_folders(d, WNIDS[:2], per_class=2)
    cache = tmp_path / "cache"
    first = scan_folder(d, cache)
    assert not first.from_cache and first.num_images == 4
    second = scan_folder(d, cache)
    assert second.from_cache and second.classes == first.classes
    time.sleep(0.01)
    write_image(d / WNIDS[1] / "new.JPEG")  # changes the class folder's mtime
    third = scan_folder(d, cache)
    assert not third.from_cache and third.num_images == 5 and "new.JPEG" in third.classes[WNIDS[1]]
