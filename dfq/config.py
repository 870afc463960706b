"""Structured configs: the schema every composed run config must fit, and checks on its values.

Hydra merges the YAML files of `conf/` into `RunConfig`, so an unknown key (`quant.w_bit=4`) fails
at composition; `validate` then builds the typed objects, whose checks name the bad key and what
would be valid, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from dfq.distill.module import FinetuneConfig
from dfq.errors import UserError
from dfq.quant.policy import QuantPolicy
from dfq.synthesis.generators import GeneratorConfig


class ConfigError(UserError):
    """A composed config holds a value outside its valid range."""


@dataclass
class InputConfig:
    """A model's input contract: normalization, image size and class count."""

    mean: list[float] = MISSING
    std: list[float] = MISSING
    image_size: int = MISSING
    num_classes: int = MISSING


@dataclass
class ModelConfig:
    """A model-zoo entry: how to build it, where its weights are, what input it takes."""

    name: str = MISSING
    arch: Any = MISSING
    checkpoint: str | None = None
    train_if_missing: Any = None  # a `_partial_` trainer for models trained on first use
    input: InputConfig = field(default_factory=InputConfig)


@dataclass
class CalibrateConfig:
    """Post-training calibration: how many samples the observers see, in which batch size."""

    num_samples: int | None = None  # None: every sample the generator made
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or (self.num_samples is not None and self.num_samples <= 0):
            raise ValueError("calibrate.batch_size and calibrate.num_samples must be positive")


@dataclass
class EvaluateConfig:
    """Test-split evaluation; `max_samples` bounds its cost on small machines (None: all)."""

    batch_size: int = 256
    max_samples: int | None = None


@dataclass
class PathsConfig:
    output_dir: str = MISSING
    cache_dir: str = MISSING
    shared_dir: str = MISSING


@dataclass
class RunConfig:
    """The schema of one dfq run (`conf/config.yaml`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: Any = MISSING
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    compare: dict[str, GeneratorConfig] = field(default_factory=dict)
    quant: QuantPolicy = field(default_factory=QuantPolicy)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    experiment: str | None = None
    task_name: str = "run"
    seed: int = 0


def register_configs() -> None:
    """Make the schema available to `conf/config.yaml` as `dfq_schema`."""
    ConfigStore.instance().store(name="dfq_schema", node=RunConfig)


def validate(cfg: DictConfig) -> RunConfig:
    """Build the typed config; each group's own checks name the key and the valid values."""
    try:
        return OmegaConf.to_object(cfg)
    except ValueError as error:  # raised by the dataclasses' __post_init__ checks
        raise ConfigError(str(error)) from error


def _schema_fields(cls: type) -> dict[str, Any]:
    """Field name -> resolved type of a dataclass schema."""
    return typing.get_type_hints(cls)


def check_key(path: str, schema: type = RunConfig) -> None:
    """Raise ConfigError when a dotted key is not in the schema, listing the valid keys at that level.

    Keys below loosely typed nodes (`model.arch`, `dataset`, `trainer`) are left to Hydra.
    """
    node: Any = schema
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            return
        fields = _schema_fields(node)
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            close = difflib.get_close_matches(part, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint}; valid keys of {where}: {sorted(fields)}")
        node = fields[part]


def check_overrides(arguments: list[str]) -> None:
    """Check the keys of command-line overrides against the schema before Hydra starts any work."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    candidates = [a for a in arguments if not a.startswith("-") and "=" in a]
    for override in OverridesParser.create().parse_overrides(candidates):
        key = override.key_or_group
        if override.type == OverrideType.CHANGE and "." in key and not key.startswith("hydra."):
            check_key(key)
