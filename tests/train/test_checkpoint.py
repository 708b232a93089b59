import random

import numpy as np
import pytest
import torch

from verydeep import checkpoint
from verydeep.train.checkpoint import rng_state, set_rng_state


def test_rng_roundtrip_through_a_safe_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    checkpoint.save(tmp_path / "c.pt", {}, train={"rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(checkpoint.load(tmp_path / "c.pt").train["rng"])
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_crash_during_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"w": torch.ones(1000)})
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(100)  # a half-written file ...
        raise OSError("disk full")  # ... and the process dies

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        checkpoint.save(path, {"w": torch.zeros(1000)})
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path).weights["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_resolve_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no best.pt"):
        checkpoint.resolve(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"")
    assert checkpoint.resolve(tmp_path).name == "last.pt"
    (tmp_path / "best.pt").write_bytes(b"")
    assert checkpoint.resolve(tmp_path).name == "best.pt"
    assert checkpoint.resolve(tmp_path / "last.pt").name == "last.pt"  # a file is itself
