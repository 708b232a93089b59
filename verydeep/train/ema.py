"""Model EMA: an exponential moving average of the weights, from ``torch.optim.swa_utils``.

After every optimiser step, ``w_ema <- decay * w_ema + (1 - decay) * w`` (the first update
copies ``w``), batch-norm statistics averaged the same way (``use_buffers=True``): the model
EMA of torchvision's reference scripts and timm. The run validates it next to the weights
(``ema_val_*`` in metrics.jsonl), checkpoints it (``ema``: a state dict with the model's keys;
``ema_updates``), and ``verydeep eval --ema`` evaluates it.

Data-parallel mode only: pipeline and hybrid ranks hold parts of the net, and the average of a
part cannot be validated or checkpointed without the parts of the other ranks.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from verydeep.models.weights import model_state_dict
from verydeep.parallel.base import upcast
from verydeep.runtime import autocast


class ModelEMA:
    """The moving average of ``model``'s weights and buffers, kept on ``device``."""

    def __init__(self, model: nn.Module, decay: float, device: torch.device | str = "cpu") -> None:
        self.decay = decay
        self.averaged = AveragedModel(model, device=device, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                      use_buffers=True)
        self.averaged.eval()  # never trained: only averaged into and evaluated

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged.item())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average in ``model``'s current weights (the trained net, or its DDP wrapper)."""
        self.averaged.update_parameters(model)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, *, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Logits of the averaged net, as ``ParallelStrategy.eval_logits`` gives the trained one's."""
        self.averaged.eval()
        with autocast(images.device, amp_dtype):
            return upcast(self.module(images))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights and buffers with the model's keys (torchvision's), on the CPU."""
        return {k: v.detach().cpu().clone() for k, v in model_state_dict(self.module).items()}

    def load_state_dict(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(weights)
        self.averaged.n_averaged.fill_(updates)
