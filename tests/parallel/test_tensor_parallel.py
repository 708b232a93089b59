"""The hybrid mode (DP convs, TP FC1/FC2) and the plain DDP strategy on 2 real processes (gloo,
CPU, fp64) against one process on the same global batch; checkpoints across modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from verydeep.models import VGG, create_model
from verydeep.parallel.config import ParallelConfig
from verydeep.parallel.strategy import build_strategy

from .helpers import CROP, LOSS, assert_close, batch, sgd, tiny_model
from .launch import run_ranks

STEPS = 3


def _full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def _strategy_rank(info, parallel: dict, global_batch: int, accum: int) -> dict:
    ref = tiny_model()
    strat = build_strategy(tiny_model(), ParallelConfig(**parallel), info, crop_size=CROP, accum=accum)
    assert (strat.data_rank, strat.data_world) == (info.rank, info.world_size)
    shard = global_batch // strat.data_world
    mine = slice(strat.data_rank * shard, (strat.data_rank + 1) * shard)
    model = strat.model  # DataParallel and HybridParallel keep the (sharded) VGG here
    ref_params = dict(ref.named_parameters())

    x, y = batch(global_batch, seed=0)
    loss = strat.forward_backward(x[mine], y[mine], LOSS)
    ref_loss = F.cross_entropy(ref(x), y)
    ref_loss.backward()
    assert_close(loss, ref_loss.detach(), "loss")
    for name, p in model.named_parameters():
        assert_close(_full(p.grad), ref_params[name].grad, f"grad of {name}")
    norm = strat.clip_grad_norm_(1e9)  # global norm, no clipping at this threshold
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1e9)
    assert_close(norm.double(), ref_norm, "global grad norm")

    opt, ref_opt = sgd(strat.parameters()), sgd(ref.parameters())
    opt.step(), ref_opt.step()
    for step in range(1, STEPS):
        opt.zero_grad(set_to_none=True), ref_opt.zero_grad(set_to_none=True)
        x, y = batch(global_batch, seed=step)
        strat.forward_backward(x[mine], y[mine], LOSS)
        F.cross_entropy(ref(x), y).backward()
        opt.step(), ref_opt.step()
    for name, p in model.named_parameters():
        assert_close(_full(p.detach()), ref_params[name].detach(), f"weight {name} after {STEPS} steps")

    # evaluation with uneven shards (5 images: 3 + 2) and an empty one
    strat.eval(), ref.eval()
    xv, _ = batch(5, seed=99)
    part = slice(0, 3) if info.rank == 0 else slice(3, 5)
    with torch.no_grad():
        assert_close(strat.eval_logits(xv[part]), ref(xv[part]), "eval logits")
        empty = xv[:0] if info.rank == 1 else xv[:2]
        assert strat.eval_logits(empty).shape[0] == empty.shape[0]
    count = strat.sum_over_data(torch.tensor(xv[part].shape[0]))
    assert int(count) == 5

    # checkpoints: full dict gathered on rank 0 loads in a single process; a single-process dict loads back
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
        assert_close(strat.eval_logits(xv[part]), other(xv[part]), "outputs after loading a single-process dict")
    with pytest.raises(ValueError, match="missing"):
        strat.load_full_state_dict({k: v for k, v in other.state_dict().items() if k != "classifier.0.bias"})
    return {"loss": float(loss), "describe": strat.describe()}


def _hybrid_rank(info) -> dict:
    out = _strategy_rank(info, {"tensor_parallel_fc": True}, 8, 1)
    out["error"] = _hybrid_error(info)
    return out


@pytest.mark.slow
def test_hybrid_dp_conv_tp_fc_equals_one_process():
    out = run_ranks(_hybrid_rank, 2)
    assert out[0]["loss"] == pytest.approx(out[1]["loss"], abs=1e-12)
    assert "FC1/FC2 tensor-parallel (128 of 256 units per process)" in out[0]["describe"]
    assert "FC width 255 is not divisible by the 2 processes" in out[0]["error"]


def _accumulation_rank(info) -> None:
    _strategy_rank(info, {"tensor_parallel_fc": True}, 8, 2)  # hybrid, 2 accumulation steps
    _strategy_rank(info, {}, 8, 2)  # plain DDP through the same interface


@pytest.mark.slow
def test_hybrid_with_accumulation_and_ddp_strategy_equal_one_process():
    run_ranks(_accumulation_rank, 2)


def _cross_mode_rank(info, path: str) -> None:
    """Save a full dict in one mode, resume it in the others (and in a single process, below)."""
    x, _ = batch(4, seed=5)
    pipe = build_strategy(tiny_model(seed=3), ParallelConfig(pipeline_stages=2, microbatches=2), info, crop_size=CROP)
    full = pipe.full_state_dict()
    if info.rank == 0:
        torch.save(full, path)
    torch.distributed.barrier()
    saved = torch.load(path, weights_only=True)
    hybrid = build_strategy(tiny_model(seed=4), ParallelConfig(tensor_parallel_fc=True), info, crop_size=CROP)
    hybrid.load_full_state_dict(saved)
    with torch.no_grad():
        mine = x[2 * info.rank:2 * info.rank + 2]
        want = tiny_model(seed=3).eval()(mine)
        assert_close(hybrid.eval().eval_logits(mine), want, "pipeline checkpoint resumed in hybrid mode")
        back = hybrid.full_state_dict()
        pipe2 = build_strategy(tiny_model(seed=5), ParallelConfig(pipeline_stages=2, microbatches=2), info,
                               crop_size=CROP)
        pipe2.load_full_state_dict(back if info.rank == 0 else saved)
        assert_close(pipe2.eval().eval_logits(x), tiny_model(seed=3).eval()(x), "hybrid checkpoint in pipeline mode")


@pytest.mark.slow
def test_checkpoints_move_between_modes_and_to_one_process(tmp_path):
    path = tmp_path / "pipeline_full.pt"
    run_ranks(_cross_mode_rank, 2, str(path))
    plain = VGG(tiny_model().spec).double()
    plain.load_state_dict(torch.load(path, weights_only=True))
    for k, v in tiny_model(seed=3).state_dict().items():
        assert torch.equal(plain.state_dict()[k], v), k


def _hybrid_error(info) -> str:
    odd = create_model("A", num_classes=10, width=1 / 16, head_size=1, dropout=0.0, fc_features=255)
    try:
        build_strategy(odd, ParallelConfig(tensor_parallel_fc=True), info, crop_size=CROP)
    except ValueError as e:
        return str(e)
    return ""


def _one_rank_fails(info) -> None:
    if info.rank == 1:
        raise RuntimeError("rank 1 gives up")
    torch.distributed.barrier()  # rank 0 would wait here forever


@pytest.mark.slow
def test_launcher_reports_the_failing_rank_instead_of_hanging():
    from .launch import RankError

    with pytest.raises(RankError, match="(?s)rank 1 of 2 failed.*rank 1 gives up"):
        run_ranks(_one_rank_fails, 2, timeout=60)
