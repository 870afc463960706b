"""Parameter-free operations exposed as modules, so hooks and the quantization policy can find them."""

from __future__ import annotations

import torch
from torch import nn


class Add(nn.Module):
    """Element-wise sum of two tensors: a residual addition that a quantizer can wrap."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y
