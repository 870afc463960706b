"""A generator is data: a recipe of loss weights, priors and an optimizer budget (`conf/generator/`).

The registries below map each option's name to its implementation; `GeneratorConfig` validates a
recipe against them before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch

from dfq.errors import UserError
from dfq.ranges import SEED_MAX, check_ranges, ranged
from dfq.synthesis.image import IMAGES
from dfq.synthesis.losses import BN_LOSSES, LABELLED_LOSSES, LOSS_NAMES, PER_SAMPLE_BN_LOSSES


class GeneratorError(UserError):
    """A recipe does not fit the model it is used with (channels, classes)."""


def balanced_labels(
    count: int, classes: torch.Tensor, offset: int = 0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Labels cycling through `classes`: every class equally often (up to one)."""
    return classes[(torch.arange(count) + offset) % len(classes)]


def random_labels(
    count: int, classes: torch.Tensor, offset: int = 0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Labels drawn uniformly (seeded) from `classes` (DeepInversion's `random_label`)."""
    return classes[torch.randint(len(classes), (count,), generator=generator)]


LabelFunction = Callable[[int, torch.Tensor, int, torch.Generator | None], torch.Tensor]
LABELS: dict[str, LabelFunction | None] = {
    "none": None,
    "balanced": balanced_labels,
    "random": random_labels,
}


def gaussian_init(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise (scaled and shifted per channel by the recipe)."""
    return torch.randn(tuple(shape), generator=generator)


def uniform_init(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Uniform noise with zero mean and unit variance, U(-sqrt 3, sqrt 3) (ZeroQ starts from uniform)."""
    return (torch.rand(tuple(shape), generator=generator) * 2 - 1) * math.sqrt(3.0)


INITS: dict[str, Callable[[Sequence[int], torch.Generator], torch.Tensor]] = {
    "gaussian": gaussian_init,
    "uniform": uniform_init,
}
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    # betas (0.5, 0.9): DeepInversion's ImageNet setting, fast to react on a changing objective
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9)),
    # PyTorch's defaults (0.9, 0.999), as in ZeroQ and DeepInversion's CIFAR-10 script
    "adam_default": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}


def lambda_schedule(factor: Callable[[int], Callable[[int], float]]) -> Callable[..., dict[str, Any]]:
    """A Lightning scheduler entry stepping every iteration with lr = base lr x factor(total)(step)."""

    def make(optimizer: torch.optim.Optimizer, total: int) -> dict[str, Any]:
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor(total)), "interval": "step"}

    return make


def plateau_schedule(optimizer: torch.optim.Optimizer, total: int) -> dict[str, Any]:
    """ZeroQ's schedule: lr x 0.1 after 100 steps without improvement of the loss, down to 1e-4."""
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=100, min_lr=1e-4)
    return {"scheduler": scheduler, "interval": "step", "monitor": STEP_LOSS}


STEP_LOSS = "synthesis/step_loss"  # logged every step (not to the logger) for loss-driven schedules
SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, int], dict[str, Any]]] = {
    "constant": lambda_schedule(lambda total: lambda step: 1.0),
    "cosine": lambda_schedule(
        lambda total: lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    ),
    "plateau": plateau_schedule,
}
LOSS_DRIVEN_SCHEDULES = frozenset({"plateau"})  # need STEP_LOSS logged every step
LAYER_WEIGHTINGS: dict[str, Callable[[int], torch.Tensor]] = {
    "uniform": lambda count: torch.ones(count),  # sum over layers (BNS, DeepInversion, ZeroQ)
    "mean": lambda count: torch.full((count,), 1.0 / max(count, 1)),  # average: depth-independent scale
}


DEFAULT_LOSSES = {"bn_kl": 1.0}


def weights_of(losses: dict[str, float] | None) -> dict[str, float]:
    """A recipe's `losses` as weights: unset (None) is BNS alone."""
    return dict(DEFAULT_LOSSES) if losses is None else dict(losses)


LATER_OPTIONS = ("image", "latent_dim", "network_lr", "swing")


def _per_channel(value: Any) -> bool:
    """A number, or a non-empty list of numbers (one per input channel)."""
    if isinstance(value, Real) and not isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_per_channel(v) for v in value)


def _non_negative(value: Any) -> bool:
    return all(v >= 0 for v in (value if isinstance(value, (list, tuple)) else [value]))


@dataclass
class GeneratorConfig:
    """One recipe for a data source. `source`: `synthesis` optimizes inputs against the teacher,
    `real` draws from the data set's training split, `saved` reads a sample set file at `path`."""

    name: str = "bn_stats"
    source: str = "synthesis"
    path: str | None = None  # source=saved: a file written by dfq.synthesize
    num_samples: int = ranged(256, 1)
    batch_size: int = ranged(128, 1)
    iterations: int = ranged(500, 0)
    lr: float = ranged(0.1, 0, open_low=True)
    optimizer: str = "adam"
    schedule: str = "cosine"
    # None: BNS alone ({bn_kl: 1}). Not a dict default: Hydra merges a YAML dict into a default dict
    # key by key, so a recipe could never drop a default term.
    losses: dict[str, float] | None = None
    layer_weighting: str = "uniform"
    first_bn_multiplier: float = ranged(1.0, 0)
    labels: str = "none"
    classes: list[int] | None = None  # target classes the labels cycle over (None: all)
    # cross_entropy leaves a sample alone once its target class is this likely (1: never)
    target_probability: float = ranged(1.0, 0, 1, open_low=True)
    init: str = "gaussian"
    init_mean: Any = 0.0  # a number, or one per input channel (normalized space)
    init_std: Any = 1.0  # likewise
    # per-sample random crop from a black frame this wide (CIFAR's training augmentation)
    pad_crop: int = ranged(0, 0)
    jitter: int = ranged(0, 0)
    flip: bool = False
    blur_sigma: float = ranged(0.0, 0)  # 0: off
    # what is optimized (dfq.synthesis.image): the pixels, or GENIE-D's generator network and latents
    image: str = "pixels"
    latent_dim: int = ranged(256, 1)  # image=generator: length of each sample's latent code
    network_lr: float = ranged(0.01, 0, open_low=True)  # image=generator: Adam lr of the network
    swing: int = ranged(0, 0)  # GENIE-D's swing: strided teacher convs see inputs shifted by up to this
    seed: int = ranged(0, 0, SEED_MAX)
    log_every: int = ranged(50, 0)  # 0: never

    def __post_init__(self) -> None:
        check_ranges(self, "generator")
        checks = {
            "optimizer": (self.optimizer in OPTIMIZERS, f"one of {sorted(OPTIMIZERS)}"),
            "schedule": (self.schedule in SCHEDULES, f"one of {sorted(SCHEDULES)}"),
            "labels": (self.labels in LABELS, f"one of {sorted(LABELS)}"),
            "classes": (
                self.classes is None or (len(self.classes) > 0 and min(self.classes) >= 0),
                "null or a non-empty list of class indices",
            ),
            "init": (self.init in INITS, f"one of {sorted(INITS)}"),
            "image": (self.image in IMAGES, f"one of {sorted(IMAGES)}"),
            "init_mean": (_per_channel(self.init_mean), "a number or a list with one per channel"),
            "init_std": (
                _per_channel(self.init_std) and _non_negative(self.init_std),
                "a non-negative number or a list with one per channel",
            ),
            "layer_weighting": (
                self.layer_weighting in LAYER_WEIGHTINGS,
                f"one of {sorted(LAYER_WEIGHTINGS)}",
            ),
            "losses": (set(self.loss_weights) <= set(LOSS_NAMES), f"names from {LOSS_NAMES}"),
        }
        for key, (ok, valid) in checks.items():
            if not ok:
                raise ValueError(f"generator.{key}={getattr(self, key)!r} is invalid; expected {valid}")
        for name in LABELLED_LOSSES:
            if self.loss_weights.get(name) and self.labels == "none":
                raise ValueError(
                    f"generator.losses has {name}, which needs generator.labels=balanced or random"
                )
        if self.blur_sigma > 0 and self.image != "pixels":
            raise ValueError(
                f"generator.blur_sigma={self.blur_sigma} low-passes pixel updates and needs "
                f"generator.image=pixels, not {self.image!r}"
            )

    def identity(self) -> dict[str, Any]:
        """The recipe as a dict for cache keys and sample metadata, without the options added since
        the first sets were made (image, latent_dim, network_lr, swing) where they are at their
        defaults, so those sets keep their keys."""
        defaults = GeneratorConfig.__dataclass_fields__
        return {
            key: value
            for key, value in dataclasses.asdict(self).items()
            if key not in LATER_OPTIONS or value != defaults[key].default
        }

    @property
    def loss_weights(self) -> dict[str, float]:
        """`losses`, or BNS alone when it is None (left unset)."""
        return weights_of(self.losses)

    @property
    def active_losses(self) -> dict[str, float]:
        """The loss terms with a non-zero weight."""
        return {name: weight for name, weight in self.loss_weights.items() if weight}

    @property
    def uses_batchnorm(self) -> bool:
        return any(name in BN_LOSSES for name in self.active_losses)

    @property
    def uses_sample_statistics(self) -> bool:
        return any(name in PER_SAMPLE_BN_LOSSES for name in self.active_losses)

    def channel_values(self, value: Any, channels: int, key: str) -> torch.Tensor:
        """`init_mean`/`init_std` as a (1, C, 1, 1) tensor for a model with `channels` input channels."""
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(values) not in (1, channels):
            raise GeneratorError(
                f"generator.{key}={value!r} has {len(values)} values; the model takes {channels} channels"
            )
        return torch.tensor(values, dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1)

    def target_classes(self, num_classes: int) -> torch.Tensor:
        """The classes labels are drawn from, checked against the model's class count."""
        classes = list(range(num_classes)) if self.classes is None else list(self.classes)
        if max(classes) >= num_classes:
            raise GeneratorError(
                f"generator.classes={self.classes} reaches past the model's {num_classes} classes"
            )
        return torch.tensor(classes, dtype=torch.long)
