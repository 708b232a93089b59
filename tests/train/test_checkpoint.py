import random

import numpy as np
import pytest
import torch

from verydeep.train import checkpoint as ckpt


def test_rng_roundtrip_through_a_safe_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt.atomic_save({"rng": ckpt.rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_crash_during_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.atomic_save({"step": torch.tensor(1), "w": torch.ones(1000)}, path)
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(100)  # a half-written file ...
        raise OSError("disk full")  # ... and the process dies

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        ckpt.atomic_save({"step": torch.tensor(2), "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    state = ckpt.load_checkpoint(path)
    assert state["step"].item() == 1 and torch.equal(state["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_find_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no best.pt"):
        ckpt.find_checkpoint(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"")
    assert ckpt.find_checkpoint(tmp_path).name == "last.pt"
    (tmp_path / "best.pt").write_bytes(b"")
    assert ckpt.find_checkpoint(tmp_path).name == "best.pt"
