"""How much a net computes: multiply-accumulates of one forward pass, counted by PyTorch's
own FLOP counter on the meta device (shapes only: no memory, no arithmetic, any net size)."""

from __future__ import annotations

import itertools

import torch
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode


def forward_macs(model: torch.nn.Module, image_size: int | tuple[int, int]) -> int:
    """Multiply-accumulates of one forward pass of one ``image_size`` image (eval mode).

    The model is run with meta copies of its parameters and buffers, so its own weights,
    device and mode are untouched. The counter reports FLOPs as 2 per multiply-accumulate.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    tensors = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
    dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
    meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            functional_call(model, meta, (torch.empty(1, 3, h, w, device="meta", dtype=dtype),))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
