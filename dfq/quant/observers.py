"""Observers turn the values a quantizer sees during calibration into a clipping range [low, high].

Options are a registry (name -> class); every observer works per tensor or per channel through
`reduce_dims`, the dimensions it reduces over.
"""

from __future__ import annotations

import torch
from torch import nn


def flatten_channels(x: torch.Tensor, channel_axis: int | None) -> torch.Tensor:
    """View `x` as (channels, values) for per-channel statistics, or (1, values) per tensor."""
    if channel_axis is None:
        return x.detach().reshape(1, -1)
    return x.detach().transpose(0, channel_axis).reshape(x.shape[channel_axis], -1)


class Observer(nn.Module):
    """Base class: `update` with each calibration batch, then `range()` gives (low, high) per channel."""

    def __init__(self, channel_axis: int | None = None) -> None:
        super().__init__()
        self.channel_axis = channel_axis

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class MinMaxObserver(Observer):
    """Running minimum and maximum over everything seen."""

    def __init__(self, channel_axis: int | None = None) -> None:
        super().__init__(channel_axis)
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    def reset(self) -> None:
        self.low = self.high = None

    def update(self, x: torch.Tensor) -> None:
        low, high = torch.aminmax(flatten_channels(x, self.channel_axis), dim=1)
        if self.low is None:
            self.low, self.high = low, high
        else:
            self.low, self.high = torch.minimum(self.low, low), torch.maximum(self.high, high)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.low is None:
            raise RuntimeError("observer has seen no data: run calibration first")
        return self.low, self.high


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of each batch's min and max (GDFQ and its successors use it)."""

    def __init__(self, channel_axis: int | None = None, momentum: float = 0.9) -> None:
        super().__init__(channel_axis)
        self.momentum = momentum

    def update(self, x: torch.Tensor) -> None:
        low, high = torch.aminmax(flatten_channels(x, self.channel_axis), dim=1)
        if self.low is None:
            self.low, self.high = low, high
        else:
            m = self.momentum
            self.low, self.high = m * self.low + (1 - m) * low, m * self.high + (1 - m) * high


class SampleObserver(Observer):
    """Keeps (a random subsample of) the values it sees; subclasses derive the range from them."""

    def __init__(self, channel_axis: int | None = None, max_values: int = 2_000_000) -> None:
        super().__init__(channel_axis)
        self.max_values = max_values
        self.values: list[torch.Tensor] = []

    def reset(self) -> None:
        self.values = []

    def update(self, x: torch.Tensor) -> None:
        flat = flatten_channels(x, self.channel_axis).float()
        if flat.shape[1] > self.max_values:
            keep = torch.randperm(flat.shape[1], device=flat.device)[: self.max_values]
            flat = flat[:, keep]
        self.values.append(flat)

    def samples(self) -> torch.Tensor:
        if not self.values:
            raise RuntimeError("observer has seen no data: run calibration first")
        return torch.cat(self.values, dim=1)


class PercentileObserver(SampleObserver):
    """Clip at the given lower/upper percentiles of the values (e.g. 99.99)."""

    def __init__(self, channel_axis: int | None = None, percentile: float = 99.99, **kwargs) -> None:
        super().__init__(channel_axis, **kwargs)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        values = self.samples()
        count = values.shape[1]
        k_high = max(1, min(count, round(count * self.percentile / 100.0)))
        k_low = max(1, min(count, count - k_high + 1))
        high = values.kthvalue(k_high, dim=1).values
        low = values.kthvalue(k_low, dim=1).values
        return low, high


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "ema_minmax": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
}


def make_observer(name: str, channel_axis: int | None = None, **options) -> Observer:
    """Build a registered observer by name; unknown names list the valid ones."""
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; valid: {sorted(OBSERVERS)}")
    return OBSERVERS[name](channel_axis=channel_axis, **options)
