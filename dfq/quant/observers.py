"""Observers turn the values a quantizer sees during calibration into a clipping range [low, high].

Options are a registry (name -> class); every observer works per tensor or per channel (values are
viewed as (channels, values)). Observers that optimize the range for the grid (`mse`, `aciq`) read its
bit width from `grid`, which the Quantizer passes from its QuantSpec.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dfq.quant.fake_quant import IntegerGrid, fake_quantize


def flatten_channels(x: torch.Tensor, channel_axis: int | None) -> torch.Tensor:
    """View `x` as (channels, values) for per-channel statistics, or (1, values) per tensor."""
    if channel_axis is None:
        return x.detach().reshape(1, -1)
    return x.detach().transpose(0, channel_axis).reshape(x.shape[channel_axis], -1)


class Observer(nn.Module):
    """Base class: `update` with each calibration batch, then `range()` gives (low, high) per channel."""

    def __init__(self, channel_axis: int | None = None, grid: IntegerGrid | None = None) -> None:
        super().__init__()
        self.channel_axis = channel_axis
        self.grid = grid or IntegerGrid()

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class MinMaxObserver(Observer):
    """Running minimum and maximum over everything seen."""

    def __init__(self, channel_axis: int | None = None, grid: IntegerGrid | None = None) -> None:
        super().__init__(channel_axis, grid)
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

    def __init__(
        self, channel_axis: int | None = None, grid: IntegerGrid | None = None, momentum: float = 0.9
    ) -> None:
        super().__init__(channel_axis, grid)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"ema_minmax momentum must be in [0, 1), got {momentum}")
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

    def __init__(
        self, channel_axis: int | None = None, grid: IntegerGrid | None = None, max_values: int = 2_000_000
    ) -> None:
        super().__init__(channel_axis, grid)
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

    def __init__(
        self,
        channel_axis: int | None = None,
        grid: IntegerGrid | None = None,
        percentile: float = 99.99,
        **kwargs,
    ) -> None:
        super().__init__(channel_axis, grid, **kwargs)
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


def subsample(values: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """At most `count` columns of (channels, values), drawn without replacement with a fixed seed."""
    if values.shape[1] <= count:
        return values
    generator = torch.Generator(device="cpu").manual_seed(seed)
    keep = torch.randperm(values.shape[1], generator=generator)[:count].to(values.device)
    return values[:, keep]


class MSEObserver(SampleObserver):
    """Clip range minimizing the mean squared quantization error on the grid's own bit width.

    Searches `num_candidates` ratios in [min_ratio, 1] that shrink the min-max range towards zero, and
    keeps, per channel, the one whose fake-quantized values are closest to the originals ("MSE-based
    range setting", Nagel et al., A White Paper on Neural Network Quantization, 2021).
    """

    def __init__(
        self,
        channel_axis: int | None = None,
        grid: IntegerGrid | None = None,
        num_candidates: int = 80,
        min_ratio: float = 0.2,
        search_values: int = 1 << 18,
        **kwargs,
    ) -> None:
        super().__init__(channel_axis, grid, **kwargs)
        if num_candidates < 1 or not 0.0 < min_ratio <= 1.0:
            raise ValueError(
                f"mse observer: num_candidates={num_candidates}, min_ratio={min_ratio} are invalid; "
                "valid: num_candidates >= 1 and min_ratio in (0, 1]"
            )
        self.ratios = torch.linspace(min_ratio, 1.0, num_candidates).tolist()
        self.search_values = search_values

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        values = self.samples()
        low, high = torch.aminmax(values, dim=1)
        values = subsample(values, self.search_values)
        best_error = torch.full_like(low, math.inf)
        best_low, best_high = low.clone(), high.clone()
        for ratio in self.ratios:
            error = quantization_error(values, low * ratio, high * ratio, self.grid)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_low = torch.where(better, low * ratio, best_low)
            best_high = torch.where(better, high * ratio, best_high)
        return best_low, best_high


def quantization_error(
    values: torch.Tensor, low: torch.Tensor, high: torch.Tensor, grid: IntegerGrid
) -> torch.Tensor:
    """Mean squared error per channel of (channels, values) fake-quantized on `grid` over [low, high]."""
    scale, zero_point, qmin, qmax = grid.affine(low, high)
    quantized = fake_quantize(values, scale[:, None], zero_point[:, None], qmin, qmax)
    return (quantized - values).pow(2).mean(dim=1)


def laplace_clipping_error(alpha: torch.Tensor) -> torch.Tensor:
    """E[(|X| - a)^2; |X| > a] for a unit-scale Laplace variable, both tails (Banner et al. 2019, eq. 5)."""
    return 2.0 * torch.exp(-alpha)


def gaussian_clipping_error(alpha: torch.Tensor) -> torch.Tensor:
    """E[(|X| - a)^2; |X| > a] for a standard normal variable, both tails."""
    density = torch.exp(-0.5 * alpha**2) / math.sqrt(2.0 * math.pi)
    return 2.0 * ((1.0 + alpha**2) * torch.special.ndtr(-alpha) - alpha * density)


CLIPPING_ERRORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "laplace": laplace_clipping_error,
    "gaussian": gaussian_clipping_error,
}


@functools.cache
def aciq_alpha(distribution: str, bits: int, one_sided: bool = False) -> float:
    """Optimal clipping value in units of the fitted scale (Laplace b, Gaussian sigma), ACIQ's rule.

    Minimizes clipping error + quantization noise alpha^2 / (3 * 4^bits) over a fine grid (Banner
    et al., NeurIPS 2019, eq. 5-6): two-sided Laplace gives 2.83, 3.89, 5.03 at 2, 3, 4 bits and
    Gaussian 1.71, 2.15, 2.55, as the paper states. A one-sided range (values >= 0, the positive part
    folded onto a half distribution) spends all 2^bits levels on one tail: the two-sided rule at bits + 1.
    """
    levels = bits + 1 if one_sided else bits
    alpha = torch.arange(1, 400_001, dtype=torch.float64) * 1e-4
    total = CLIPPING_ERRORS[distribution](alpha) + alpha**2 / (3.0 * 4.0**levels)
    return float(alpha[total.argmin()])


class ACIQObserver(SampleObserver):
    """Analytical clipping (ACIQ; Banner et al., NeurIPS 2019): fit a Laplace or Gaussian, clip at alpha*.

    Two-sided channels clip at center +- alpha* x scale (Laplace: median and mean absolute deviation;
    Gaussian: mean and standard deviation). Non-negative channels (after a ReLU) fit the positive values
    as a half distribution (exponential mean, half-normal root mean square) and clip at [0, alpha*].
    Ranges never exceed the observed min-max.
    """

    def __init__(
        self,
        channel_axis: int | None = None,
        grid: IntegerGrid | None = None,
        distribution: str = "laplace",
        **kwargs,
    ) -> None:
        super().__init__(channel_axis, grid, **kwargs)
        if distribution not in CLIPPING_ERRORS:
            raise ValueError(
                f"aciq distribution={distribution!r} is invalid; valid: {sorted(CLIPPING_ERRORS)}"
            )
        self.distribution = distribution

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        values = self.samples()
        low, high = torch.aminmax(values, dim=1)
        values = subsample(values, 1 << 20)
        bits = self.grid.bits
        if self.distribution == "laplace":
            center = values.median(dim=1).values
            spread = (values - center[:, None]).abs().mean(dim=1)
        else:
            center, spread = values.mean(dim=1), values.std(dim=1)
        alpha = aciq_alpha(self.distribution, bits) * spread
        two_sided = (torch.maximum(center - alpha, low), torch.minimum(center + alpha, high))
        positive = torch.where(values > 0, values, torch.nan)
        if self.distribution == "laplace":
            half_spread = positive.nanmean(dim=1)
        else:
            half_spread = positive.pow(2).nanmean(dim=1).sqrt()
        half_spread = torch.nan_to_num(half_spread, nan=0.0)
        one_sided_high = torch.minimum(aciq_alpha(self.distribution, bits, True) * half_spread, high)
        non_negative = low >= 0
        return (
            torch.where(non_negative, low, two_sided[0]),
            torch.where(non_negative, one_sided_high, two_sided[1]),
        )


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "ema_minmax": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "aciq": ACIQObserver,
}


def accepted_options(cls: type[Observer]) -> set[str]:
    """Keyword options an observer class takes (its own and those it passes on to its bases)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names: set[str] = set()
    for klass in cls.__mro__[: cls.__mro__.index(Observer)]:
        if "__init__" in vars(klass):
            parameters = inspect.signature(klass.__init__).parameters.values()
            names |= {p.name for p in parameters if p.kind in named}
    return names - {"self", "channel_axis", "grid"}


def known_options() -> set[str]:
    """Every option some registered observer takes."""
    return set().union(*(accepted_options(cls) for cls in OBSERVERS.values()))


def make_observer(
    name: str, channel_axis: int | None = None, grid: IntegerGrid | None = None, **options
) -> Observer:
    """Build a registered observer by name; unknown names and options list the valid ones.

    Options that belong to another registered observer are dropped, so switching `observer=mse` on a
    preset that set `percentile: 99.99` works; an option no observer knows is an error.
    """
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; valid: {sorted(OBSERVERS)}")
    unknown = sorted(set(options) - known_options())
    if unknown:
        valid = sorted(accepted_options(OBSERVERS[name]))
        raise ValueError(f"observer option {unknown[0]!r} is unknown; valid for {name}: {valid}")
    return OBSERVERS[name](channel_axis=channel_axis, grid=grid, **own_options(name, options))


def own_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options the registered observer `name` takes; those of other observers dropped (all are
    kept for a name not registered here)."""
    if name not in OBSERVERS:
        return dict(options)
    own = accepted_options(OBSERVERS[name])
    return {key: value for key, value in options.items() if key in own}
