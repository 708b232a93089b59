"""The step's non-finite guard where ranks hold different parts of the net (pipeline stages,
FC shards): an inf planted in one rank's gradients drops the update on every rank, so the
ranks never disagree on the weights (2 real processes, gloo, CPU)."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.tensor import DTensor

from verydeep.parallel.config import ParallelConfig
from verydeep.parallel.strategy import build_strategy
from verydeep.train.nonfinite import SKIPPED
from verydeep.train.schedules import LRSchedule
from verydeep.train.step import StepSettings, train_step
from verydeep.training_config import ScheduleConfig

from .helpers import CROP, batch, sgd, tiny_model
from .launch import run_ranks


def _local(t):
    return t.to_local() if isinstance(t, DTensor) else t


def _guard_rank(info, parallel: dict) -> list:
    strat = build_strategy(tiny_model(), ParallelConfig(**parallel), info, crop_size=CROP)
    opt = sgd(strat.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    schedule = LRSchedule(ScheduleConfig(name="constant"), 0.05, steps_per_epoch=10, epochs=1)
    x, y = batch(8, seed=0)
    shard = 8 // strat.data_world
    mine = slice(strat.data_rank * shard, (strat.data_rank + 1) * shard)
    settings = StepSettings(nonfinite="skip")
    statuses = [train_step(strat, opt, scaler, schedule, x[mine], y[mine], step=0, settings=settings).status.item()]
    before = [_local(p).detach().clone() for p in strat.parameters()]
    real = strat.forward_backward

    def planted(*a, **k):  # rank 1 alone finds an inf in one of its gradients
        loss = real(*a, **k)
        if info.rank == 1:
            grad = next(p.grad for p in strat.parameters() if p.grad is not None)
            (g := _local(grad))[(0,) * g.dim()] = float("inf")  # any memory format
        return loss

    strat.forward_backward = planted
    statuses.append(train_step(strat, opt, scaler, schedule, x[mine], y[mine], step=1, settings=settings).status.item())
    unchanged = all(torch.equal(a, _local(b).detach()) for a, b in zip(before, strat.parameters()))
    return [statuses, unchanged]


@pytest.mark.parametrize("parallel", [{"pipeline_stages": 2, "microbatches": 2}, {"tensor_parallel_fc": True}],
                         ids=["pipeline", "hybrid"])
def test_an_inf_gradient_on_one_rank_drops_the_update_on_every_rank(parallel):
    for statuses, unchanged in run_ranks(_guard_rank, 2, parallel, timeout=180):
        assert statuses == [0.0, float(SKIPPED)] and unchanged
