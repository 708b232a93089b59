"""What every parallel mode provides to the training loop: the :class:`ParallelStrategy`
interface (described in :mod:`verydeep.parallel.strategy`) and the helpers the modes share."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from verydeep.parallel.distributed import DistInfo


def check_full_state_dict(expected: list[str], sd: dict) -> None:
    """Raise with the missing and unexpected keys unless ``sd`` is exactly a full VGG state dict."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in set(expected)]
    if missing or unexpected:
        raise ValueError(
            f"not a full state dict of this net: missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
            f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}"
        )


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Low-precision (AMP) logits to float32 for the loss and metrics; fp32/fp64 unchanged."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


class ParallelStrategy:
    """Base class: what the training loop sees (see the module docstring)."""

    mode: str = "base"
    # Ranks hold different parts of the net (pipeline stages, FC shards), so what one rank
    # finds in its own tensors (a non-finite gradient or weight) the others must be told.
    sharded: bool = False

    def __init__(self, dist_info: DistInfo) -> None:
        self.dist = dist_info
        self.device = dist_info.device

    # -- what the subclasses provide -------------------------------------------------------
    local_module: nn.Module

    @property
    def data_rank(self) -> int:
        raise NotImplementedError

    @property
    def data_world(self) -> int:
        raise NotImplementedError

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor,
                         loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                         amp_dtype: torch.dtype | None = None, loss_scale: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    def eval_logits(self, images: torch.Tensor, *, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        raise NotImplementedError

    def sum_over_data(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        raise NotImplementedError

    def load_full_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.mode}: {self.dist.world_size} process(es)"

    # -- shared ----------------------------------------------------------------------------
    def parameters(self) -> Iterator[nn.Parameter]:
        return self.local_module.parameters()

    def floating_buffers(self) -> list[torch.Tensor]:
        """This rank's floating-point buffers (the batch-norm running statistics), which the
        step's guard reads after every update. The modules that hold buffers are found once
        (walking the whole module tree each step cost 0.2 ms of the demo net's 36 ms CPU step);
        their buffers are read afresh each call, so a buffer replaced (``module.to``) is seen."""
        holders = getattr(self, "_buffer_holders", None)
        if holders is None:
            holders = self._buffer_holders = [m for m in self.local_module.modules()
                                              if next(m.buffers(recurse=False), None) is not None]
        return [b for m in holders for b in m.buffers(recurse=False) if b.is_floating_point()]

    def train(self, mode: bool = True) -> "ParallelStrategy":
        self.local_module.train(mode)
        return self

    def eval(self) -> "ParallelStrategy":
        return self.train(False)

    def any_rank(self, flag: torch.Tensor) -> torch.Tensor:
        """``flag`` (0-d float on the device, 1.0: found), raised on every rank when any rank
        raised it (a collective where the net is sharded); no host read."""
        if self.sharded and dist.is_initialized() and self.dist.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag

    def _grad_sq_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of squared grads counted once globally, sum to be all-reduced over the world)."""
        raise NotImplementedError

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip by the norm of the *whole* net's gradient, whichever rank holds which part."""
        once, shared = self._grad_sq_sums()
        if dist.is_initialized() and self.dist.world_size > 1:
            dist.all_reduce(shared)
        total = (once + shared).sqrt()
        # The coefficient stays on the device (no host read in the training step); x 1.0 when
        # the norm is within bounds is exact, so the unclipped case is unchanged.
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for p in self.parameters():
            if p.grad is not None:
                grad = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
                grad.mul_(coef.to(grad.dtype))
        return total
