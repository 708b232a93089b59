"""MixUp/CutMix labels (class probabilities [B, K]) through every parallel mode's step: the
loss is the unsplit net's soft-label cross-entropy on the whole global batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from .helpers import CROP, LOSS, assert_close, batch, tiny_model
from .launch import run_ranks


def _soft_label_rank(info) -> list[float]:
    from verydeep.parallel.pipeline import PipelineParallel
    from verydeep.parallel.tensor_parallel import HybridParallel

    losses = []
    for build in (lambda: PipelineParallel(tiny_model(), info, stages=2, microbatches=2, schedule="1f1b",
                                           crop_size=CROP),
                  lambda: HybridParallel(tiny_model(), info)):
        ref, strat = tiny_model(), build()
        x, _ = batch(8, seed=0)
        soft = torch.softmax(torch.randn(8, ref.spec.num_classes, dtype=x.dtype,
                                         generator=torch.Generator().manual_seed(1)), 1)
        shard = 8 // strat.data_world
        mine = slice(strat.data_rank * shard, (strat.data_rank + 1) * shard)
        loss = strat.forward_backward(x[mine], soft[mine], LOSS)
        ref_loss = F.cross_entropy(ref(x), soft)
        ref_loss.backward()
        assert_close(loss, ref_loss.detach(), "loss")
        ref_grads = dict(ref.named_parameters())
        module = getattr(strat, "stage_module", None)
        for name, p in (module.named_parameters() if module is not None else ()):
            assert_close(p.grad, ref_grads[name].grad, f"grad of {name}")
        losses.append(float(loss))
    return losses


@pytest.mark.slow
def test_soft_labels_in_pipeline_and_hybrid_modes():
    results = run_ranks(_soft_label_rank, 2, timeout=180)
    assert results[0] == results[1]
