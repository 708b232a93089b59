"""The runtime policy's choices that do not need the device itself to be present."""

from __future__ import annotations

import torch

from verydeep.runtime import Runtime, build_runtime


def test_training_batches_come_in_bf16_only_where_a_whole_model_autocasts_to_bf16_on_cuda():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert Runtime(device=cuda, amp_dtype=torch.bfloat16).batch_dtype() == torch.bfloat16
    # a pipeline stage or a tensor-parallel FC shard hands on activations in its input's dtype
    assert Runtime(device=cuda, amp_dtype=torch.bfloat16).batch_dtype(whole_model=False) == torch.float32
    assert Runtime(device=cuda, amp_dtype=torch.float16).batch_dtype() == torch.float32  # the scaler's territory
    assert Runtime(device=cuda, amp_dtype=None).batch_dtype() == torch.float32  # --amp none: the exact run
    assert Runtime(device=cpu, amp_dtype=torch.bfloat16).batch_dtype() == torch.float32


def test_cpu_runs_take_channels_last_by_default_and_keep_an_explicit_choice():
    assert build_runtime("cpu").channels_last
    assert not build_runtime("cpu", channels_last=False).channels_last
