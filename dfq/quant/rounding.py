"""Rounding as a quantizer piece: nearest (the default, straight through) or AdaRound's learned
rounding (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020).

A `Quantizer` with a `rounding` module asks it for the integer codes of its (fixed) weight instead of
rounding each value to nearest; `AdaRound` gives floor(w / s + f) plus a learned offset in [0, 1]
(soft while reconstructing, 0 or 1 once hardened).
"""

from __future__ import annotations

import torch
from torch import nn

# AdaRound's rectified sigmoid stretches sigmoid's (0, 1) to (GAMMA, ZETA) and clips it to [0, 1], so
# that the offset reaches 0 and 1 exactly with a finite variable.
GAMMA, ZETA = -0.1, 1.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """The V with h(V) = h, for h in (0, 1): where AdaRound starts (at the nearest-rounding offset)."""
    h = h.clamp(1e-4, 1 - 1e-4)
    return -torch.log((ZETA - GAMMA) / (h - GAMMA) - 1)


class AdaRound(nn.Module):
    """A learned rounding direction per weight value, on a fixed grid position floor(w / s + f).

    `codes()` is floor + h(V) while soft, floor + [V >= 0] once `harden` was called; `regularizer`
    is AdaRound's f_reg = sum(1 - |2 h(V) - 1|^beta), which pushes every h(V) to 0 or 1.
    """

    def __init__(self, grid_position: torch.Tensor) -> None:
        super().__init__()
        floor = torch.floor(grid_position.detach())
        self.register_buffer("floor", floor)
        self.variable = nn.Parameter(inverse_rectified_sigmoid(grid_position.detach() - floor))
        self.hard = False

    def offset(self) -> torch.Tensor:
        """The rounding offsets in [0, 1]: soft, or exactly 0/1 once hardened."""
        if self.hard:
            return (self.variable >= 0).to(self.floor.dtype)
        return rectified_sigmoid(self.variable)

    def codes(self) -> torch.Tensor:
        """The weight's grid positions after rounding (before clamping to the integer range)."""
        return self.floor + self.offset()

    def regularizer(self, beta: float) -> torch.Tensor:
        """f_reg(V) = sum(1 - |2 h(V) - 1|^beta): 0 only when every offset is 0 or 1."""
        return (1 - (2 * rectified_sigmoid(self.variable) - 1).abs().pow(beta)).sum()

    def harden(self) -> None:
        """Round every value up or down for good (h(V) >= 0.5 up): the weights land on the grid."""
        self.hard = True
        self.variable.requires_grad_(False)


def annealed_beta(iteration: int, iterations: int, warmup: float, start: float, end: float) -> float:
    """AdaRound's regularizer exponent: `start` through the warm-up fraction, then linearly to `end`."""
    begin = warmup * iterations
    if iteration < begin:
        return start
    progress = (iteration - begin) / max(iterations - begin, 1)
    return end + (start - end) * max(0.0, 1.0 - progress)
