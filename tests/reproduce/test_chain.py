"""The chain planner: the paper's runs in dependency order, links to the parent's best.pt,
finished runs skipped and an interrupted one resumed (tiny nets, a few steps each)."""

import os
import signal

import pytest

from tests.reproduce.conftest import TINY
from verydeep.errors import Interrupted
from verydeep.reproduce import chain
from verydeep.reproduce.chain import (
    DONE,
    INTERRUPTED,
    NEW,
    dependency_order,
    plan_chain,
)
from verydeep.reproduce.profiles import PAPER_CHAIN
from verydeep.reproduce.runner import train_chain
from verydeep.train import loop
from verydeep.train.metrics import read_metrics


def test_the_whole_chain_in_dependency_order(tiny_data, tmp_path):
    plan = plan_chain(TINY, tiny_data, tmp_path)
    names = [r.name for r in plan]
    assert sorted(names) == sorted(PAPER_CHAIN)
    parents = {r.name: r.depends_on for r in plan}
    assert parents["paper_A_S256"] is None and parents["paper_A-LRN_S256"] is None
    assert {parents[f"paper_{n}_S256"] for n in "BCDE"} == {"paper_A_S256"}
    assert all(parents[f"paper_{n}_S384"] == f"paper_{n}_S256" for n in "CDE")
    assert all(parents[f"paper_{n}_multiscale"] == f"paper_{n}_S384" for n in "CDE")
    # 13 runs: the ILSVRC submission's jittered D, its FC layers alone fine-tuned (Sec. 4.5)
    assert len(plan) == 13 and parents["paper_D_multiscale_fconly"] == "paper_D_S384"
    fc_only = next(r for r in plan if r.name == "paper_D_multiscale_fconly")
    assert (fc_only.net, fc_only.column) == ("D", "multiscale")
    cfg = fc_only.config()
    assert cfg.model.freeze_convs and (cfg.data.scale_min, cfg.data.scale_max) == (37, 73)
    assert not next(r for r in plan if r.name == "paper_D_multiscale").config().model.freeze_convs
    for i, run in enumerate(plan):
        assert run.status == NEW and run.run_dir == tmp_path / run.name
        if run.depends_on:
            assert names.index(run.depends_on) < i
            cfg = run.config()
            key = run.link.split(".")[1]
            assert getattr(cfg.model, key) == str(tmp_path / run.depends_on / "best.pt")
    # the profile's shrunk scales keep the paper's proportions (crop 32: S=256 -> 37, 512 -> 73)
    jittered = next(r for r in plan if r.name == "paper_D_multiscale").config().data
    assert (jittered.crop_size, jittered.scale_min, jittered.scale_max, jittered.eval_scale) == (32, 37, 73, 55)




def test_a_subset_brings_its_ancestors_and_cycles_are_refused(tiny_data, tmp_path):
    plan = plan_chain(TINY, tiny_data, tmp_path, wanted={"paper_D_multiscale"})
    assert [r.name for r in plan] == ["paper_A_S256", "paper_D_S256", "paper_D_S384", "paper_D_multiscale"]
    assert dependency_order(["c", "b", "a"], {"a": None, "b": "a", "c": "b"}) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="cycle"):
        dependency_order(["a", "b"], {"a": "b", "b": "a"})
    with pytest.raises(ValueError, match="not a run of the chain"):
        dependency_order(["a"], {"a": "elsewhere"})


def test_finished_runs_are_skipped_and_an_interrupted_one_resumed(tiny_data, tmp_path, monkeypatch):
    wanted = {"paper_B_S256"}
    real_step, calls = loop.train_step, []

    def step_then_sigterm(*args, **kwargs):
        # B's third step is preempted: the loop checkpoints at the step boundary and stops
        calls.append(kwargs["step"])
        out = real_step(*args, **kwargs)
        if len(calls) == 2 * 2 + 3:  # A: 2 epochs x 2 steps (12 images, batch 6); then B's third
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(loop, "train_step", step_then_sigterm)
    with pytest.raises(Interrupted) as stopped:
        train_chain(plan_chain(TINY, tiny_data, tmp_path, wanted))
    # the way to continue that exists: reproduce has no --resume
    message = str(stopped.value)
    assert "--resume" not in message and "run the same verydeep reproduce command again" in message
    monkeypatch.setattr(loop, "train_step", real_step)
    plan = plan_chain(TINY, tiny_data, tmp_path, wanted)
    assert [(r.name, r.status) for r in plan] == [("paper_A_S256", DONE), ("paper_B_S256", INTERRUPTED)]

    a_checkpoint = (tmp_path / "paper_A_S256" / "last.pt").stat().st_mtime_ns
    summary = train_chain(plan)
    assert (tmp_path / "paper_A_S256" / "last.pt").stat().st_mtime_ns == a_checkpoint  # skipped
    assert summary["paper_A_S256"]["status"] == DONE and summary["paper_B_S256"]["status"] == INTERRUPTED
    assert chain.run_status(tmp_path / "paper_B_S256") == DONE
    steps = [r["step"] for r in read_metrics(tmp_path / "paper_B_S256") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]  # resumed after step 3: every step once, none repeated
    assert summary["paper_B_S256"]["steps"] == 4
