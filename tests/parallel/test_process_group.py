"""The process group's backend: gloo on CPU; under NCCL, CPU tensors through gloo."""

from __future__ import annotations

import pytest
import torch

from tests.parallel.launch import run_ranks
from verydeep.parallel.distributed import all_reduce_sum, backend_spec


@pytest.mark.parametrize("backend, device, spec", [
    ("auto", "cpu", "gloo"), ("gloo", "cpu", "gloo"), ("gloo", "cuda", "gloo"),
    # host-side collectives (coverage counts, the agreed stop) run on CPU tensors: gloo's side
    ("auto", "cuda", "cpu:gloo,cuda:nccl"), ("nccl", "cuda", "cpu:gloo,cuda:nccl"),
])
def test_backend_spec(backend, device, spec):
    assert backend_spec(backend, device) == spec


def _stop_agreed(info, raised_on: int):
    from verydeep.train.loop import StopFlag

    flag = StopFlag()
    if info.rank == raised_on:
        flag.raised = "SIGTERM"
    agreed = flag.agreed(True)
    return agreed, flag.raised, all_reduce_sum(torch.ones(1)).item()


@pytest.mark.slow
def test_a_signal_seen_by_one_rank_stops_every_rank_at_the_same_step():
    results = run_ranks(_stop_agreed, 2, 1)
    assert results == [(True, "SIGTERM", 2.0), (True, "SIGTERM", 2.0)]
