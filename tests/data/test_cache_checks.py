"""The file index and statistics caches are checked before they are trusted: a checksum of
their own content, names inside their folder, finite numbers of the right shape. A cache that
fails is rebuilt, with a warning naming it; a stats file of the user's that fails is refused,
naming it."""

import json
import logging
import os

import pytest
from .conftest import WNIDS, write_class_folders, write_colour_images, write_image

from verydeep.data import DataConfig
from verydeep.data.checked_cache import write_checked_json
from verydeep.data.errors import DataError
from verydeep.data.index_cache import scan_folder
from verydeep.data.stats import resolve_stats
from verydeep.data.transforms import normalization


def _index_cache(tmp_path):
    d = tmp_path / "train"
    write_class_folders(d, WNIDS[:2], per_class=2)
    cache = tmp_path / "cache"
    first = scan_folder(d, cache)
    (cache_file,) = cache.glob("*.json")
    return d, cache, cache_file, first


def _payload(cache_file):
    data = json.loads(cache_file.read_text())
    del data["sha256"]
    return data


def test_a_hand_edited_index_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    d, cache, cache_file, first = _index_cache(tmp_path)
    data = json.loads(cache_file.read_text())
    data["classes"][WNIDS[0]].append("../../../../../etc/passwd")  # valid JSON, checksum left as it was
    cache_file.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        again = scan_folder(d, cache)
    assert not again.from_cache and again.classes == first.classes
    assert f"{cache_file}: file index cache not used" in caplog.text and "checksum does not match" in caplog.text
    assert scan_folder(d, cache).from_cache  # the rebuilt cache is trusted again


@pytest.mark.parametrize("edit", [
    lambda p: p["classes"][WNIDS[0]].append("../../../../../etc/passwd"),
    lambda p: p["classes"][WNIDS[0]].append("/etc/passwd"),
    lambda p: p["classes"].update({"../elsewhere": ["a.JPEG"]}),
    lambda p: p["files"].append("sub/../../x.JPEG"),
    lambda p: p["mtimes"].update({"../..": 0}),
    lambda p: p.update(classes=[]),
])
def test_an_index_cache_with_a_valid_checksum_still_needs_names_inside_its_folder(tmp_path, caplog, edit):
    d, cache, cache_file, first = _index_cache(tmp_path)
    payload = _payload(cache_file)
    edit(payload)
    write_checked_json(cache_file, payload)  # whoever can write the cache can recompute its checksum
    with caplog.at_level(logging.WARNING):
        again = scan_folder(d, cache)
    assert not again.from_cache and again.classes == first.classes
    assert f"{cache_file}: file index cache not used" in caplog.text


def test_an_index_cache_without_a_checksum_is_rebuilt(tmp_path, caplog):
    d, cache, cache_file, first = _index_cache(tmp_path)
    cache_file.write_text(json.dumps(_payload(cache_file)))  # as an older verydeep wrote it
    with caplog.at_level(logging.WARNING):
        assert scan_folder(d, cache).classes == first.classes
    assert "no checksum" in caplog.text


def test_a_file_added_with_the_folder_mtime_restored_is_the_documented_blind_spot(tmp_path):
    d, cache, _, first = _index_cache(tmp_path)
    folder = d / WNIDS[1]
    st = os.stat(folder)
    write_image(folder / "late.JPEG")
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))
    stale = scan_folder(d, cache)  # docs/data.md: the mtime key cannot notice this
    assert stale.from_cache and "late.JPEG" not in stale.classes[WNIDS[1]]
    for f in (tmp_path / "cache").glob("*.json"):  # the documented remedy: delete the cache
        f.unlink()
    assert "late.JPEG" in scan_folder(d, cache).classes[WNIDS[1]]


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("bad", [
    {"mean": [float("nan"), 0.5, 0.5]},
    {"mean": [0.5, 0.5]},
    {"mean": "0.5 0.5 0.5"},
    {"std": [0.1, 0.0, 0.1]},
    {"pca_eigvec": [[1, 0, 0], [0, 1, 0]]},
    {"pca_eigval": [1.0, float("inf"), 0.1]},
])
def test_a_stats_cache_with_unusable_numbers_is_recomputed_naming_the_file(tmp_path, caplog, bad):
    paths = write_colour_images(tmp_path)
    cfg = DataConfig(normalize="caffe", stats_file="train", index_cache=str(tmp_path / "cache"))
    assert resolve_stats(cfg, paths, progress=False).mean == pytest.approx([0.5] * 3)
    (cache_file,) = (tmp_path / "cache").glob("stats-*.json")
    payload = _payload(cache_file)
    payload.update(bad)
    write_checked_json(cache_file, payload)
    with caplog.at_level(logging.WARNING):
        resolved = resolve_stats(cfg, paths, progress=False)
    assert resolved.mean == pytest.approx([0.5] * 3)  # recomputed, not the cache's
    assert f"{cache_file}: training-set statistics cache not used" in caplog.text
    assert _payload(cache_file)["mean"] == pytest.approx([0.5] * 3)  # and the cache rewritten


def test_a_stats_cache_edited_without_its_checksum_is_recomputed(tmp_path, caplog):
    paths = write_colour_images(tmp_path)
    cfg = DataConfig(normalize="caffe", stats_file="train", index_cache=str(tmp_path / "cache"))
    resolve_stats(cfg, paths, progress=False)
    (cache_file,) = (tmp_path / "cache").glob("stats-*.json")
    data = json.loads(cache_file.read_text())
    data["mean"] = [0.1, 0.2, 0.3]
    cache_file.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        assert resolve_stats(cfg, paths, progress=False).mean == pytest.approx([0.5] * 3)
    assert "checksum does not match" in caplog.text and str(cache_file) in caplog.text


@pytest.mark.parametrize("mean,why", [
    ([0.5, 0.5], "mean must be 3 numbers"),
    (["a", "b", "c"], "mean must be 3 numbers"),
    ("0.5", "mean must be 3 numbers"),
    ([0.5, float("nan"), 0.5], "mean holds a non-finite value"),
])
def test_a_stats_file_with_unusable_numbers_is_refused_naming_it(tmp_path, mean, why):
    path = tmp_path / "my_stats.json"
    path.write_text(json.dumps({"mean": mean, "pca_eigval": [0.2, 0.02, 0.004],
                                "pca_eigvec": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}))
    with pytest.raises(DataError, match=f"stats_file {path}: {why}"):
        normalization(DataConfig(stats_file=str(path)))
    with pytest.raises(DataError, match=f"stats_file {path}: {why}"):
        resolve_stats(DataConfig(stats_file=str(path)))

