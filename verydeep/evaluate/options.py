"""How to evaluate: the test-time choices the paper leaves open, batching, and the runtime."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from verydeep.evaluate.posterior_store import DEFAULT_DTYPE
from verydeep.evaluate.protocols import DENSE_AVERAGE
from verydeep.runtime import Runtime, build_runtime


@dataclass(frozen=True)
class EvalOptions:
    """Settings shared by ``evaluate_rows``, ``evaluate`` and ``predict``.

    ``flip``: average each input with its mirror image (the paper does). ``dense_average``:
    ``scores`` or ``posteriors`` (``protocols.dense_scores``). ``batch_size``: images per
    loader batch. ``crop_batch``: most crops per forward pass in multi-crop (the evaluator's
    default: 4 x batch_size, at least one image's crops). ``device`` and ``amp``: the runtime
    to build (``verydeep.runtime``) when the caller passes none. ``posteriors_dtype``: the
    stored posteriors' dtype (``posterior_store.DTYPES``; float32 for bit-for-bit float32 sums).
    ``dense_pooling``: the dense form's max-pool rounding, ``floor`` (PyTorch) or ``ceil`` (Caffe,
    the paper's tool).
    """

    flip: bool = True
    dense_average: str = DENSE_AVERAGE
    batch_size: int = 32
    crop_batch: int | None = None
    progress: bool = True
    device: str | torch.device = "auto"
    amp: str = "auto"
    posteriors_dtype: str = DEFAULT_DTYPE
    dense_pooling: str = "floor"

    def runtime(self, local_rank: int = 0) -> Runtime:
        return build_runtime(self.device, self.amp, local_rank=local_rank)
