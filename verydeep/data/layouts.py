"""Dataset layouts: find the training and validation images and their labels.

Train: class folders (``train/<wnid>/*.JPEG``, as ILSVRC2012_img_train unpacks; any folder of
class folders works). Validation, detected in this order:

* ``class_folders``: ``val/<wnid>/*`` like train;
* ``kaggle_csv``: a flat ``val/`` plus Kaggle's ``LOC_val_solution.csv``
  (ImageId,PredictionString; the first token of PredictionString is the wnid);
* ``devkit``: a flat ``val/`` plus the devkit's ``ILSVRC2012_validation_ground_truth.txt``
  (line i: ILSVRC id of ``ILSVRC2012_val_<i:08d>``) and a text mapping ILSVRC id -> wnid;
* ``wnid_list``: a flat ``val/`` plus a text file with one wnid per line, line i for the i-th
  image in sorted order (TensorFlow's ``imagenet_2012_validation_synset_labels.txt``).

Class index = position in the sorted list of training wnids: ImageFolder's and torchvision's
order, so labels agree with torchvision weights.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from verydeep.data.config import DataConfig
from verydeep.data.errors import DataError
from verydeep.data.holdout import split_holdout
from verydeep.data.index_cache import FolderIndex, scan_folder

log = logging.getLogger(__name__)

KAGGLE_CSV = "LOC_val_solution.csv"
DEVKIT_GT = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_MAPPINGS = ("ILSVRC2012_id_to_wnid.txt", "ILSVRC2012_mapping.txt", "ILSVRC2012_synsets.txt")
SYNSET_NAMES = ("LOC_synset_mapping.txt", "synset_words.txt")


@dataclass
class Splits:
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    classes: list[str]  # sorted wnids; the class index is the position
    class_names: dict[str, str] = field(default_factory=dict)  # wnid -> human-readable name
    val_layout: str = ""  # class_folders | kaggle_csv | devkit | wnid_list | none
    train_dir: str | None = None
    val_dir: str | None = None
    val_labels: str | None = None  # the ground-truth file used, if any
    # (path, reason) of entries the file index skipped: links to folders indexed already
    # (symlink loops, duplicates), non-regular files, broken links
    problems: list[tuple[str, str]] = field(default_factory=list)
    # training images held out of ``train`` for model selection (data.holdout); empty: none
    holdout: list[tuple[str, int]] = field(default_factory=list)

    @property
    def selection(self) -> list[tuple[str, int]]:
        """The images a training run validates on (best.pt, the plateau rule): the held-out
        training images when there are any, else the validation set."""
        return self.holdout or self.val

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> str:
        labels = f" ({self.val_labels})" if self.val_labels else ""
        held = f" ({len(self.holdout)} more held out for model selection)" if self.holdout else ""
        return (f"{len(self.classes)} classes; train: {len(self.train)} images in {self.train_dir}{held}; "
                f"val: {len(self.val)} images in {self.val_dir}, layout {self.val_layout}{labels}")


def _first_existing(candidates) -> Path | None:
    for c in candidates:
        if c is not None and Path(c).is_file():
            return Path(c)
    return None


def _resolve_dirs(cfg: DataConfig) -> tuple[Path | None, Path | None, Path | None]:
    root = Path(cfg.root).expanduser() if cfg.root else None
    if root is not None and not root.is_dir():
        raise DataError(f"data root {root} is not a folder")
    base = root
    if root is not None and (root / "ILSVRC" / "Data" / "CLS-LOC").is_dir() and not (root / "train").is_dir():
        base = root / "ILSVRC" / "Data" / "CLS-LOC"  # Kaggle's unpacked layout
    train = Path(cfg.train_dir).expanduser() if cfg.train_dir else (base / "train" if base else None)
    val = Path(cfg.val_dir).expanduser() if cfg.val_dir else (base / "val" if base else None)
    if cfg.train_dir and not train.is_dir():
        raise DataError(f"train_dir {train} is not a folder")
    if cfg.val_dir and not val.is_dir():
        raise DataError(f"val_dir {val} is not a folder")
    if train is None and val is None:
        raise DataError("no data given: set data.root (a folder with train/ and val/) or data.train_dir / data.val_dir")
    return root, train if train and train.is_dir() else None, val if val and val.is_dir() else None


def _search_dirs(root, train, val) -> list[Path]:
    dirs = []
    for d in (val, root, val.parent if val else None, train.parent if train else None,
              (root / "ILSVRC2012_devkit_t12" / "data") if root else None):
        if d is not None and d not in dirs:
            dirs.append(d)
    return dirs


def read_synset_names(path) -> dict[str, str]:
    """``<wnid> <name...>`` per line (LOC_synset_mapping.txt, synset_words.txt)."""
    names = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.strip().split(maxsplit=1)
            if not parts:
                continue
            if not parts[0].startswith("n") and len(parts) == 2 and parts[1].split()[0].startswith("n"):
                parts = parts[1].split(maxsplit=1)  # "<id> <wnid> <name>" devkit-style mapping
            names[parts[0]] = parts[1].strip() if len(parts) > 1 else parts[0]
    return names


def read_devkit_mapping(path) -> tuple[dict[int, str], dict[str, str]]:
    """ILSVRC id -> wnid, from ``<id> <wnid> [name]`` lines or one ``<wnid> [name]`` per line
    (line number = id). Also returns any names given after the wnid."""
    ids, names = {}, {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if parts[0].isdigit():
                if len(parts) < 2:
                    raise DataError(f"{path}:{lineno}: expected '<ILSVRC id> <wnid>', got {line.strip()!r}")
                key, wnid, rest = int(parts[0]), parts[1], parts[2:]
            else:
                key, wnid, rest = lineno, parts[0], parts[1:]
            if key in ids:
                raise DataError(f"{path}:{lineno}: ILSVRC id {key} appears twice")
            ids[key] = wnid
            if rest:
                names[wnid] = " ".join(rest)
    if not ids:
        raise DataError(f"{path}: empty ILSVRC id -> wnid mapping")
    return ids, names


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def _flat_lookup(index: FolderIndex, val: Path) -> dict[str, str]:
    lookup = {}
    for f in index.files:
        s = _stem(f)
        if s in lookup:
            raise DataError(f"{val}: two images named {s} ({lookup[s]} and {f}); cannot match them to labels")
        lookup[s] = f
    return lookup


def _check_wnid(wnid: str, class_index: dict[str, int], where: str, train) -> int:
    try:
        return class_index[wnid]
    except KeyError:
        raise DataError(f"{where}: wnid {wnid!r} is not a class of the training set"
                        f" ({train if train else 'class list'})") from None


def parse_kaggle_csv(path, val: Path, index: FolderIndex, class_index: dict[str, int], train=None):
    lookup = _flat_lookup(index, val)
    out, seen = [], set()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or "ImageId" not in header or "PredictionString" not in header:
            raise DataError(f"{path}:1: expected the header 'ImageId,PredictionString', got {header!r}")
        ci, cp = header.index("ImageId"), header.index("PredictionString")
        for lineno, row in enumerate(reader, 2):
            if not row or not any(c.strip() for c in row):
                continue
            where = f"{path}:{lineno}"
            if len(row) <= max(ci, cp) or not row[cp].split():
                raise DataError(f"{where}: expected 'ImageId,PredictionString', got {','.join(row)!r}")
            image_id = _stem(row[ci].strip())
            if image_id in seen:
                raise DataError(f"{where}: image {image_id} is listed twice")
            seen.add(image_id)
            label = _check_wnid(row[cp].split()[0], class_index, where, train)
            if image_id not in lookup:
                raise DataError(f"{where}: image {image_id} not found in {val}")
            out.append((str(val / lookup[image_id]), label))
    return out, set(lookup) - seen


def parse_devkit(gt_path, mapping_path, val: Path, index: FolderIndex, class_index: dict[str, int], train=None):
    ids, names = read_devkit_mapping(mapping_path)
    lookup = _flat_lookup(index, val)
    out, seen = [], set()
    with open(gt_path, encoding="utf-8") as f:
        n = 0
        for lineno, line in enumerate(f, 1):
            token = line.strip()
            if not token:
                continue
            n += 1
            where = f"{gt_path}:{lineno}"
            if not token.isdigit():
                raise DataError(f"{where}: expected an ILSVRC class id (1-1000), got {token!r}")
            if int(token) not in ids:
                raise DataError(f"{where}: ILSVRC id {token} is not in the mapping {mapping_path}")
            label = _check_wnid(ids[int(token)], class_index, where, train)
            image_id = f"ILSVRC2012_val_{n:08d}"
            if image_id not in lookup:
                raise DataError(f"{where}: image {image_id} not found in {val}")
            seen.add(image_id)
            out.append((str(val / lookup[image_id]), label))
    return out, set(lookup) - seen, names


def parse_wnid_list(path, val: Path, index: FolderIndex, class_index: dict[str, int], train=None):
    files = index.files
    out = []
    with open(path, encoding="utf-8") as f:
        n = 0
        for lineno, line in enumerate(f, 1):
            wnid = line.strip()
            if not wnid:
                continue
            where = f"{path}:{lineno}"
            label = _check_wnid(wnid.split()[0], class_index, where, train)
            if n >= len(files):
                raise DataError(f"{where}: label for image number {n + 1}, but {val} holds only {len(files)} images")
            out.append((str(val / files[n]), label))
            n += 1
    return out, {_stem(f) for f in files[n:]}


def _labels_kind(path: Path) -> str:
    if path.suffix.lower() == ".csv":
        return "kaggle_csv"
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return "devkit" if line.strip().isdigit() else "wnid_list"
    raise DataError(f"{path}: empty ground-truth file")


def _synset_names(cfg: DataConfig, search: list[Path]) -> tuple[dict[str, str], Path | None]:
    """wnid -> human name from ``data.synset_names`` or a LOC_synset_mapping.txt found nearby."""
    names_file = Path(cfg.synset_names) if cfg.synset_names else _first_existing(d / n for d in search for n in SYNSET_NAMES)
    if names_file is None:
        return {}, None
    if not names_file.is_file():
        raise DataError(f"synset_names file {names_file} not found")
    return read_synset_names(names_file), names_file


def _train_samples(train: Path, cache, problems: list) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples, classes) of a train/<class>/<image> folder; labels are sorted-class indices."""
    tindex = scan_folder(train, cache)
    problems.extend(tindex.problems)
    if not tindex.classes:
        raise DataError(f"{train}: no class folders (expected train/<class>/<image>)")
    empty = [c for c, files in tindex.classes.items() if not files]
    if empty:
        raise DataError(f"{train / empty[0]}: empty class folder (no image files)"
                        + (f"; {len(empty) - 1} more empty" if len(empty) > 1 else ""))
    if tindex.files:
        log.warning("%s: ignoring %d image files outside class folders", train, len(tindex.files))
    classes = sorted(tindex.classes)
    samples = []
    for label, c in enumerate(classes):
        base = os.path.join(tindex.path, c)
        samples.extend((os.path.join(base, f), label) for f in tindex.classes[c])
    return samples, classes


def _val_class_folders(val: Path, vindex: FolderIndex, classes: list[str], train) -> tuple[list, list[str]]:
    """(samples, classes) of a val/<class>/<image> folder, numbered as the training classes."""
    empty = [c for c, files in vindex.classes.items() if not files]
    if empty:
        raise DataError(f"{val / empty[0]}: empty class folder (no image files)")
    if not classes:
        classes = sorted(vindex.classes)
        log.warning("no training folder: classes taken from the validation folders of %s", val)
    class_index = {c: i for i, c in enumerate(classes)}
    samples = []
    for c in sorted(vindex.classes):
        if c not in class_index:
            raise DataError(f"{val / c}: validation class {c!r} is not a class of the training set "
                            f"({train or 'the class list given'})")
        base = os.path.join(vindex.path, c)
        samples.extend((os.path.join(base, f), class_index[c]) for f in vindex.classes[c])
    return samples, classes


def _ground_truth_file(cfg: DataConfig, val: Path, vindex: FolderIndex, search: list[Path]) -> tuple[Path, str]:
    """(file, layout) of a flat validation folder's labels: ``data.val_labels`` or one found."""
    if cfg.val_labels:
        labels_file = Path(cfg.val_labels)
        if not labels_file.is_file():
            raise DataError(f"val_labels file {labels_file} not found")
        return labels_file, _labels_kind(labels_file)
    csv_file = _first_existing(d / KAGGLE_CSV for d in search)
    gt_file = _first_existing(d / DEVKIT_GT for d in search)
    if csv_file and gt_file:
        raise DataError(f"both {csv_file} and {gt_file} describe the flat folder {val}: "
                        "set data.val_labels to the one to use")
    if not csv_file and not gt_file:
        raise DataError(f"{val} is a flat folder of {len(vindex.files)} images but no ground truth was found "
                        f"({KAGGLE_CSV} or {DEVKIT_GT} in {', '.join(map(str, search))}); set data.val_labels")
    return (csv_file, "kaggle_csv") if csv_file else (gt_file, "devkit")


def _val_flat(cfg: DataConfig, val: Path, vindex: FolderIndex, classes: list[str], train, search: list[Path],
              names: dict[str, str], names_file: Path | None) -> tuple[list, list[str], str, Path]:
    """(samples, classes, layout, labels file) of a flat validation folder with a ground-truth
    file (Kaggle csv, devkit ids, or one wnid per line); devkit names are added to ``names``."""
    if not vindex.files:
        raise DataError(f"{val}: no images (expected val/<class>/<image> or a flat folder with a ground-truth file)")
    if not classes:
        if not names:
            raise DataError(f"no training folder and no synset list (LOC_synset_mapping.txt): "
                            f"cannot number the classes of {val}")
        classes = sorted(names)
        log.warning("no training folder: classes are the sorted wnids of %s", names_file)
    class_index = {c: i for i, c in enumerate(classes)}
    labels_file, layout = _ground_truth_file(cfg, val, vindex, search)
    if layout == "kaggle_csv":
        samples, unlabeled = parse_kaggle_csv(labels_file, val, vindex, class_index, train)
    elif layout == "devkit":
        mapping = Path(cfg.val_synsets) if cfg.val_synsets else _first_existing(
            d / n for d in [labels_file.parent, *search] for n in DEVKIT_MAPPINGS)
        if mapping is None or not mapping.is_file():
            raise DataError(f"{labels_file} gives ILSVRC ids; set data.val_synsets to a text file mapping "
                            f"them to wnids ('<id> <wnid>' per line; looked for {', '.join(DEVKIT_MAPPINGS)})")
        samples, unlabeled, more_names = parse_devkit(labels_file, mapping, val, vindex, class_index, train)
        for k, v in more_names.items():
            names.setdefault(k, v)
    else:
        samples, unlabeled = parse_wnid_list(labels_file, val, vindex, class_index, train)
    if unlabeled:
        log.warning("%s: %d images have no label in %s and are left out (e.g. %s)", val, len(unlabeled),
                    labels_file, sorted(unlabeled)[0])
    if not samples:
        raise DataError(f"{labels_file}: no labels")
    return samples, classes, layout, labels_file


def _warn_problems(problems: list[tuple[str, str]]) -> None:
    for path, reason in problems[:5]:
        log.warning("%s: %s", path, reason)
    if len(problems) > 5:
        log.warning("%d more entries skipped (verydeep data check lists them all)", len(problems) - 5)


def discover(cfg: DataConfig, classes: list[str] | None = None) -> Splits:
    """Find the training and validation samples of ``cfg`` and their labels (see module doc).
    Fails fast, naming the file and line, on empty folders and inconsistent ground truth.

    ``classes``: the class list to number a validation folder by when there is no training
    folder (a checkpoint's, for evaluation); the training folder's classes take precedence."""
    root, train, val = _resolve_dirs(cfg)
    search = _search_dirs(root, train, val)
    names, names_file = _synset_names(cfg, search)
    problems: list[tuple[str, str]] = []
    train_samples, found = _train_samples(train, cfg.index_cache, problems) if train is not None else ([], [])
    classes = found or list(classes or [])

    val_samples: list[tuple[str, int]] = []
    layout, labels_file = "none", None
    if val is not None:
        vindex = scan_folder(val, cfg.index_cache)
        problems.extend(vindex.problems)
        if vindex.classes and vindex.files and not cfg.val_labels:
            raise DataError(f"{val}: holds both class folders and {len(vindex.files)} loose images; "
                            "cannot tell its layout (set data.val_labels for a flat folder)")
        if vindex.classes and not cfg.val_labels:
            layout = "class_folders"
            val_samples, classes = _val_class_folders(val, vindex, classes, train)
        else:
            val_samples, classes, layout, labels_file = _val_flat(cfg, val, vindex, classes, train, search,
                                                                  names, names_file)
    if not classes:
        raise DataError(f"no training folder found (looked for {root / 'train' if root else 'data.train_dir'})")
    class_names = {c: names[c] for c in classes if c in names}
    train_samples, held_out = split_holdout(train_samples, classes, cfg.holdout, cfg.holdout_seed)
    splits = Splits(train_samples, val_samples, classes, class_names, layout,
                    str(train) if train else None, str(val) if val else None,
                    str(labels_file) if labels_file else None, problems, held_out)
    _warn_problems(problems)
    log.info("data: %s", splits.summary())
    return splits
