"""A generator is data: a recipe of loss weights, priors and an optimizer budget (`conf/generator/`).

The registries below map each option's name to its implementation; `GeneratorConfig` validates a
recipe against them before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dfq.synthesis.losses import BN_LOSSES, LOSS_NAMES

SOURCES = ("synthesis", "real")


def balanced_labels(count: int, num_classes: int, offset: int = 0) -> torch.Tensor:
    """Labels cycling through the classes: every class equally often (up to one)."""
    return (torch.arange(count) + offset) % num_classes


LABELS: dict[str, Callable[[int, int, int], torch.Tensor] | None] = {
    "none": None,
    "balanced": balanced_labels,
}
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9)),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}
SCHEDULES: dict[str, Callable[[int], Callable[[int], float]]] = {
    "constant": lambda total: lambda step: 1.0,
    "cosine": lambda total: lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1))),
}


@dataclass
class GeneratorConfig:
    """One synthesis recipe. `source=real` means: take real training images instead (the reference)."""

    name: str = "bn_stats"
    source: str = "synthesis"
    num_samples: int = 256
    batch_size: int = 128
    iterations: int = 500
    lr: float = 0.1
    optimizer: str = "adam"
    schedule: str = "cosine"
    losses: dict[str, float] = field(default_factory=lambda: {"bn_kl": 1.0})
    first_bn_multiplier: float = 1.0
    labels: str = "none"
    init_mean: float = 0.0
    init_std: float = 1.0
    jitter: int = 0
    flip: bool = False
    blur_sigma: float = 0.0
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        checks = {
            "source": (self.source in SOURCES, f"one of {list(SOURCES)}"),
            "num_samples": (self.num_samples > 0, "a positive integer"),
            "batch_size": (self.batch_size > 0, "a positive integer"),
            "iterations": (self.iterations >= 0, "zero or more"),
            "optimizer": (self.optimizer in OPTIMIZERS, f"one of {sorted(OPTIMIZERS)}"),
            "schedule": (self.schedule in SCHEDULES, f"one of {sorted(SCHEDULES)}"),
            "labels": (self.labels in LABELS, f"one of {sorted(LABELS)}"),
            "losses": (set(self.losses) <= set(LOSS_NAMES), f"names from {LOSS_NAMES}"),
        }
        for key, (ok, valid) in checks.items():
            if not ok:
                raise ValueError(f"generator.{key}={getattr(self, key)!r} is invalid; expected {valid}")
        if "cross_entropy" in self.losses and self.labels == "none":
            raise ValueError("generator.losses has cross_entropy, which needs generator.labels=balanced")

    @property
    def uses_batchnorm(self) -> bool:
        return any(name in BN_LOSSES for name, weight in self.losses.items() if weight)
