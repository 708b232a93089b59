"""Local response normalization as the paper uses it (Krizhevsky et al. 2012, Sec. 3.3):

    b_c = a_c / (k + alpha * sum_{c' in the n channels around c} a_c'^2) ^ beta

with k=2, n=5, alpha=1e-4, beta=0.75. ``nn.LocalResponseNorm`` (like Caffe's LRN layer)
divides alpha by n: ``k + alpha / n * sum``; with the same numbers it normalizes 5x more
weakly than the paper's layer. This module keeps torch's parameters and attribute names
(``size``, ``alpha``, ``beta``, ``k``: the paper's values) and computes Krizhevsky's sum.
It has no parameters, so state-dict keys do not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KrizhevskyLRN(nn.LocalResponseNorm):
    """Cross-channel LRN with ``alpha`` multiplying the window's sum of squares (not its mean)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.local_response_norm averages the squares over the window: alpha * n makes it the sum
        return F.local_response_norm(x, self.size, self.alpha * self.size, self.beta, self.k)

    def extra_repr(self) -> str:
        return super().extra_repr() + " (alpha on the window's sum, as Krizhevsky et al.)"
