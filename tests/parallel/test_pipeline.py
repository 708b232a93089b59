"""Pipeline parallelism on real processes (gloo, CPU, fp64) against the unsplit net."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from verydeep.models import VGG, VGGSpec
from verydeep.parallel.pipeline import PipelineParallel, balanced_split, plan_stages, vgg_units

from .helpers import CROP, LOSS, assert_close, batch, sgd, tiny_model
from .launch import run_ranks

STEPS = 3


def _pipeline_rank(info, schedule: str, stages: int, global_batch: int, check_errors: bool = False) -> dict:
    ref = tiny_model()
    strat = PipelineParallel(tiny_model(), info, stages=stages, microbatches=2, schedule=schedule, crop_size=CROP)
    shard = global_batch // strat.data_world
    mine = slice(strat.data_rank * shard, (strat.data_rank + 1) * shard)
    ref_params = dict(ref.named_parameters())

    # one step: loss and gradients against the unsplit net on the whole global batch
    x, y = batch(global_batch, seed=0)
    loss = strat.forward_backward(x[mine], y[mine], LOSS)
    ref_loss = F.cross_entropy(ref(x), y)
    ref_loss.backward()
    assert_close(loss, ref_loss.detach(), "loss")
    for name, p in strat.stage_module.named_parameters():
        assert_close(p.grad, ref_params[name].grad, f"grad of {name}")

    # a few SGD steps (momentum, weight decay) give the same weights
    opt, ref_opt = sgd(strat.parameters()), sgd(ref.parameters())
    opt.step(), ref_opt.step()
    for step in range(1, STEPS):
        opt.zero_grad(set_to_none=True), ref_opt.zero_grad(set_to_none=True)
        x, y = batch(global_batch, seed=step)
        strat.forward_backward(x[mine], y[mine], LOSS)
        F.cross_entropy(ref(x), y).backward()
        opt.step(), ref_opt.step()
    for name, p in strat.stage_module.named_parameters():
        assert_close(p.detach(), ref_params[name].detach(), f"weight {name} after {STEPS} steps")

    # evaluation: every stage gets the logits; an odd batch size and an empty one work
    strat.eval()
    ref.eval()
    xv, _ = batch(5, seed=99)
    with torch.no_grad():
        assert_close(strat.eval_logits(xv).double(), ref(xv), "eval logits")
    assert strat.eval_logits(xv[:0]).shape == (0, 10)
    strat.train()

    # checkpoints: the gathered full dict is the unsplit net's; a single-process dict loads back
    full = strat.full_state_dict()
    if info.rank == 0:
        assert list(full) == list(ref.state_dict())
        plain = VGG(ref.spec).double()
        plain.load_state_dict(full)
        plain.eval()
        with torch.no_grad():
            assert_close(plain(xv), ref(xv), "outputs of the gathered state dict")
    else:
        assert full is None
    other = tiny_model(seed=7).eval()
    strat.load_full_state_dict(other.state_dict())
    with torch.no_grad():
        assert_close(strat.eval_logits(xv).double(), other(xv), "outputs after loading a single-process dict")
    out = {"loss": float(loss), "describe": strat.describe(), "data": (strat.data_rank, strat.data_world)}
    if check_errors:  # (in the same processes: each launch costs seconds)
        out["errors"] = _bad_config(info)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_two_stage_pipeline_equals_unsplit_net(schedule):
    out = run_ranks(_pipeline_rank, 2, schedule, 2, 8, schedule == "gpipe")
    assert out[0]["loss"] == pytest.approx(out[1]["loss"], abs=1e-12)
    assert [o["data"] for o in out] == [(0, 1), (0, 1)]  # both stages load the same batch
    assert "stage 0: features.0" in out[0]["describe"] and "stage 1:" in out[0]["describe"]
    if schedule == "gpipe":
        msgs = out[0]["errors"]
        assert "world size 2 is not divisible by parallel.pipeline_stages=3" in msgs[0]
        assert "'zb'" in msgs[1]
        assert "batch 8 is not divisible by parallel.microbatches=3" in msgs[2]


@pytest.mark.slow
def test_pipeline_composes_with_data_parallel():
    """4 ranks: mesh dp=2 x pp=2; each pipeline its half of the global batch, grads averaged over dp."""
    out = run_ranks(_pipeline_rank, 4, "1f1b", 2, 8, timeout=120)
    assert [o["data"] for o in out] == [(0, 2), (0, 2), (1, 2), (1, 2)]


def _bad_config(info) -> list[str]:
    msgs = []
    for kwargs in ({"stages": 3}, {"stages": 2, "schedule": "zb"}):
        try:
            PipelineParallel(tiny_model(), info, microbatches=2, crop_size=CROP, **kwargs)
        except ValueError as e:
            msgs.append(str(e))
    strat = PipelineParallel(tiny_model(), info, stages=2, microbatches=3, crop_size=CROP)
    x, y = batch(8, seed=0)
    try:
        strat.forward_backward(x, y, LOSS)
    except ValueError as e:
        msgs.append(str(e))
    return msgs


def test_balanced_split_hand_checked():
    # costs 1..5 in 2 parts: {1,2,3 | 4,5} -> max 9 (the other cuts give 10, 12, 14)
    assert balanced_split([1, 2, 3, 4, 5], 2) == [0, 3]
    assert balanced_split([5, 1, 1, 1, 1, 1], 2) == [0, 1]
    assert balanced_split([1, 1, 1, 1], 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cannot cut 3 splittable units .* into 4 stages"):
        balanced_split([1, 1, 1], 4)


def test_vgg_a_split_at_224_falls_after_conv4():
    """Net A, 224x224, 2 stages, by hand (multiply-adds, M):
    conv1 224^2*3*64*9 = 86.7, conv2 112^2*64*128*9 = 924.8, conv3 56^2*128*256*9 = 924.8,
    conv4 56^2*256*256*9 = 1849.7 | conv5 28^2*256*512*9 = 924.8, conv6 28^2*512^2*9 = 1849.7,
    conv7, conv8 14^2*512^2*9 = 462.4 each, FC 25088*4096 + 4096^2 + 4096*1000 = 123.6.
    Cut after conv4: 3786.0 | 3823.0 (max 3823); after conv3: 1936.3 | 5672.7; after conv5:
    4710.8 | 2898.1. So the boundary is after conv4 (block 3's pool, features.10)."""
    with torch.device("meta"):
        model = VGG(VGGSpec(config="A"))
    units = vgg_units(model, 224)
    assert len(units) == 8 + 3
    assert units[1].flops == 2 * 112 * 112 * 64 * 128 * 9
    plans = plan_stages(model, 2, crop_size=224)
    assert plans[0].names[-1] == "features.10" and plans[1].names[0] == "features.11"
    conv = 2 * 9 * (224**2 * 3 * 64 + 112**2 * 64 * 128 + 56**2 * (128 * 256 + 256 * 256))
    rest = 2 * (9 * (28**2 * (256 * 512 + 512 * 512) + 2 * 14**2 * 512 * 512)
                + 25088 * 4096 + 4096 * 4096 + 4096 * 1000)
    assert plans[0].flops_share == pytest.approx(conv / (conv + rest))
    assert plans[1].params_share > 0.9  # FC1..FC3 hold most of the weights
    with pytest.raises(ValueError, match="pipeline_stages=12 but net A has only 11 splittable units"):
        plan_stages(model, 12, crop_size=224)
