"""Checkpoint files under damage and refusal: damaged files fail naming themselves on every load
path (resume, eval, predict, export, init_from), writes the system refuses end in one line,
and files are written readable by the group and others as the umask allows."""

from __future__ import annotations

import errno
import os
import random
import tempfile
import zipfile

import pytest
import torch

from verydeep import checkpoint
from verydeep.checkpoint import save_weights
from verydeep.cli.main import main
from verydeep.config import load_config
from verydeep.errors import EXIT_CHECKPOINT, EXIT_IO, CheckpointError, OutputError
from verydeep.models import create_model
from verydeep.train.loop import train

from .conftest import TINY_OVERRIDES

QUICK = ["train.plot=false", "train.epochs=1"]


def _cfg(root, *extra):
    return load_config(None, [*TINY_OVERRIDES, f"data.root={root}", *QUICK, *extra])


@pytest.fixture(scope="module")
def finished_run(tiny_imagenet, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    train(_cfg(tiny_imagenet), run)
    return run


def _damage_tensor(src, dst, member_suffix="data/0", count=100):
    """Copy ``src`` to ``dst`` with ``count`` bytes flipped inside one stored tensor."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member_suffix))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # the member's bytes
    for i in range(start, start + min(count, info.file_size)):
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def test_a_damaged_last_pt_stops_resume_naming_the_file(tiny_imagenet, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _damage_tensor(finished_run / "last.pt", run / "last.pt", "data/9")
    with pytest.raises(CheckpointError, match=rf"{run / 'last.pt'}: damaged checkpoint: .* fails its CRC check"):
        train(_cfg(tiny_imagenet, "train.epochs=2"), run, resume=True)
    args = ["train", "--config", "demo", "--data", str(tiny_imagenet), "--out", str(run), "--resume"]
    args += [x for s in [*TINY_OVERRIDES, *QUICK] for x in ("--set", s)]
    assert main(args) == EXIT_CHECKPOINT
    err = capsys.readouterr().err
    assert "Traceback" not in err and "CRC" in err.strip().splitlines()[-1]


def test_a_damaged_best_pt_is_not_evaluated(tiny_imagenet, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _damage_tensor(finished_run / "best.pt", run / "best.pt")
    code = main(["eval", "--checkpoint", str(run), "--data", str(tiny_imagenet), "--protocol", "center",
                 "--scales", "32"])
    assert code == EXIT_CHECKPOINT
    assert "fails its CRC check" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def truncated(finished_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("truncated")
    pt = d / "cut.pt"
    pt.write_bytes((finished_run / "best.pt").read_bytes()[:5000])
    model = create_model("A", num_classes=3, width=1 / 16, head_size=1, fc_features=32)
    full = save_weights(model, d / "full.safetensors")
    st = d / "cut.safetensors"
    st.write_bytes(full.read_bytes()[:-64])
    flipped = d / "flipped.safetensors"
    data = bytearray(full.read_bytes())
    data[-40] ^= 0xFF  # inside the last tensor's bytes
    flipped.write_bytes(bytes(data))
    noise = d / "noise.pt"
    noise.write_bytes(random.Random(0).randbytes(4096))  # fixed: some random bytes start like a pickle
    return {"pt": pt, "safetensors": st, "flipped": flipped, "noise": noise}


@pytest.mark.parametrize("kind", ["pt", "safetensors", "flipped", "noise"])
@pytest.mark.parametrize("command", ["eval", "predict", "export", "init_from"])
def test_damaged_files_end_in_one_line_on_every_entry_point(command, kind, truncated, tiny_imagenet, tmp_path,
                                                            capsys):
    path = truncated[kind]
    image = next((tiny_imagenet / "val").rglob("*.JPEG"))
    argv = {
        "eval": ["eval", "--checkpoint", str(path), "--data", str(tiny_imagenet)],
        "predict": ["predict", "--checkpoint", str(path), str(image)],
        "export": ["export", "--checkpoint", str(path), "--out", str(tmp_path / "x"), "--format", "safetensors"],
        "init_from": ["train", "--config", "demo", "--data", str(tiny_imagenet), "--out", str(tmp_path / "r"),
                      *[x for s in [*TINY_OVERRIDES, *QUICK, f"model.init_from={path}"] for x in ("--set", s)]],
    }[command]
    assert main(argv) == EXIT_CHECKPOINT
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) >= 1
    last = err.splitlines()[-1]
    assert last.startswith("verydeep: error: ") and str(path) in last
    assert "weights_only=False" not in last and "weights_only` set to `False`" not in last


def test_a_random_bytes_checkpoint_is_named_without_pytorchs_advice(truncated):
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(truncated["noise"])
    assert str(e.value) == f"{truncated['noise']}: not a PyTorch checkpoint (damaged, or another format)"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_checkpoints_are_written_with_the_modes_the_umask_allows(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = checkpoint.save(tmp_path / "last.pt", {"w": torch.ones(3)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_a_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(tiny_imagenet, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real = torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *args, **kwargs):  # what PyTorch raises when write() returns ENOSPC
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    args = ["train", "--config", "demo", "--data", str(tiny_imagenet), "--out", str(run)]
    args += [x for s in [*TINY_OVERRIDES, "train.plot=false", "train.checkpoint_every_steps=1"] for x in ("--set", s)]
    assert main(args) == EXIT_IO
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"verydeep: error: cannot write checkpoint {run / 'last.pt'}: "
                                           f"PytorchStreamWriter failed writing file data/3")
    assert "MiB free on its disk" in err
    monkeypatch.undo()
    assert checkpoint.load(run / "last.pt").train["step"] == 1  # the first write stands
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_a_read_only_folder_ends_in_one_line(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError) as e:
        checkpoint.save(tmp_path / "last.pt", {"w": torch.ones(1)})
    assert e.value.exit_code == EXIT_IO
    assert str(e.value).endswith(f"cannot write checkpoint {tmp_path / 'last.pt'}: Read-only file system")
