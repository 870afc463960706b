"""Structured configs: the schema every composed run config must fit, and checks on its values.

Hydra merges the YAML files of `conf/` into `RunConfig`, so an unknown key (`quant.w_bit=4`) fails
at composition; `validate` then builds the typed objects, whose checks name the bad key and what
would be valid, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from dfq.distill.module import FinetuneConfig
from dfq.errors import UserError
from dfq.quant.calibrate import CalibrateConfig
from dfq.quant.mixed_precision import MixedPrecisionConfig
from dfq.quant.policy import QuantPolicy
from dfq.quant.reconstruct import ReconstructConfig
from dfq.ranges import SEED_MAX, Range, check_ranges, field_range, out_of_range, ranged
from dfq.samples import sample_source
from dfq.speed import SpeedConfig
from dfq.steps import check_steps
from dfq.synthesis.generators import GeneratorConfig


class ConfigError(UserError):
    """A composed config holds a value outside its valid range."""


def check_sources(recipes: dict[str, GeneratorConfig]) -> None:
    """Every recipe's `source` names an entry of the one registry of sample sources."""
    for key, recipe in recipes.items():
        try:
            sample_source(recipe.source, f"{key}.source")
        except UserError as error:
            raise ValueError(str(error)) from error


@dataclass
class InputConfig:
    """A model's input contract: normalization, image size and class count, and the padding of the
    random crops it was trained on (its BN statistics were recorded on them)."""

    mean: list[float] = MISSING
    std: list[float] = MISSING
    image_size: int = ranged(MISSING, 1)
    num_classes: int = ranged(MISSING, 1)
    pad_crop: int = ranged(0, 0)


@dataclass
class ModelConfig:
    """A model-zoo entry: how to build it, where its weights are, what input it takes."""

    name: str = MISSING
    arch: Any = MISSING
    checkpoint: str | None = None
    train_if_missing: Any = None  # a `_partial_` trainer for models trained on first use
    input: InputConfig = field(default_factory=InputConfig)


@dataclass
class StudentConfig:
    """The student's recipe: its steps in order, each a `dfq.steps.STEPS` name whose options live in
    the group of the same role (`calibrate`, `reconstruct`, `finetune`); an inactive step
    (`reconstruct=none`, `finetune=none`) is skipped."""

    steps: list[str] = field(default_factory=lambda: ["calibrate", "reconstruct", "distill"])

    def __post_init__(self) -> None:
        check_steps(self.steps)


@dataclass
class EvaluateConfig:
    """Test-split evaluation; `max_samples` bounds its cost on small machines (None: all)."""

    batch_size: int = ranged(256, 1)
    max_samples: int | None = ranged(None, 1)

    def __post_init__(self) -> None:
        check_ranges(self, "evaluate")


@dataclass
class PathsConfig:
    output_dir: str = MISSING
    cache_dir: str = MISSING
    shared_dir: str = MISSING
    # Sample sets, keyed by model and recipe, shared by every run (a sweep over bits synthesizes once);
    # None keeps them in each run directory.
    sample_cache: str | None = None


@dataclass
class RunConfig:
    """The schema of one dfq run (`conf/config.yaml`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: Any = MISSING
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    compare: dict[str, GeneratorConfig] = field(default_factory=dict)
    quant: QuantPolicy = field(default_factory=QuantPolicy)
    mixed_precision: MixedPrecisionConfig = field(default_factory=MixedPrecisionConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    logger: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    experiment: str | None = None
    task_name: str = "run"
    seed: int = ranged(0, 0, SEED_MAX)

    def __post_init__(self) -> None:
        check_sources({"generator": self.generator} | {f"compare.{k}": v for k, v in self.compare.items()})


@dataclass
class SynthesizeConfig:
    """The schema of `dfq.synthesize` (`conf/synthesize.yaml`): one teacher, one recipe, one file."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: Any = None  # for a teacher trained on first use, and the `real` source
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    logger: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    out: str = MISSING  # the sample set file; its batches are kept in `<out>.parts/` until it is done
    grid: bool = True  # also write `<out>` with suffix .png: a grid of the samples
    task_name: str = "synthesize"

    def __post_init__(self) -> None:
        check_sources({"generator": self.generator})


@dataclass
class SimilarityConfig:
    """The schema of `dfq.similarity` (`conf/similarity.yaml`): one teacher, one data set to score."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: Any = None
    split: str = "train"  # a split of `dataset`, or `gaussian` for N(0, 1) noise in normalized space
    num_samples: int | None = ranged(None, 1)  # the first N of the split (None: all; gaussian: 256)
    batch_size: int = ranged(256, 1)
    seed: int = ranged(0, 0, SEED_MAX)
    out: str | None = None  # a JSON file for the score and its per-layer breakdown
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "similarity"


def register_configs() -> None:
    """Make the schemas available to the primary configs: `dfq_schema` (config.yaml),
    `dfq_synthesize_schema` (synthesize.yaml), `dfq_similarity_schema` (similarity.yaml)."""
    store = ConfigStore.instance()
    store.store(name="dfq_schema", node=RunConfig)
    store.store(name="dfq_synthesize_schema", node=SynthesizeConfig)
    store.store(name="dfq_similarity_schema", node=SimilarityConfig)


def compose_config(overrides: typing.Sequence[str] = (), output_dir: str | None = None) -> DictConfig:
    """A run config composed from dfq's packaged configs outside a Hydra app (scripts, Python callers)."""
    from hydra import compose, initialize_config_module

    register_configs()
    overrides = [*overrides, *([f"paths.output_dir={output_dir}"] if output_dir else [])]
    with initialize_config_module("dfq.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def ranged_values(node: Any, schema: type, prefix: str = "") -> Iterator[tuple[str, Range, Any]]:
    """(full key, declared Range, value) of every ranged field of a composed config (or part of one),
    a node's own fields before its groups' (so `seed=-1` is named, not the `generator.seed` that
    follows it), dict-of-schema nodes (`compare`) walked per entry. Only ranged leaves are resolved:
    others may need Hydra's resolvers."""
    if not dataclasses.is_dataclass(schema) or not isinstance(node, DictConfig):
        return
    hints = _schema_fields(schema)
    for field_ in dataclasses.fields(schema):
        valid = field_range(field_)
        if valid is not None:
            value = OmegaConf.select(node, field_.name, default=None, throw_on_missing=False)
            yield f"{prefix}{field_.name}", valid, value
    for field_ in dataclasses.fields(schema):
        key, kind = f"{prefix}{field_.name}", hints[field_.name]
        if typing.get_origin(kind) is dict and dataclasses.is_dataclass(typing.get_args(kind)[1]):
            items = node.get(field_.name) or {}
            for name in items:
                yield from ranged_values(items[name], typing.get_args(kind)[1], f"{key}.{name}.")
        elif dataclasses.is_dataclass(kind):
            yield from ranged_values(node.get(field_.name), kind, f"{key}.")


def validate(cfg: DictConfig) -> Any:
    """Build the typed config (its schema: `RunConfig`, `SynthesizeConfig`, ...): first every numeric
    value against its declared range (the full key named), then each group's own checks."""
    for key, valid, value in ranged_values(cfg, OmegaConf.get_type(cfg)):
        if value is not None and value not in valid:  # Range passes non-numbers to the schema's check
            raise ConfigError(out_of_range(key, value, valid))
    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as error:  # a `???` left in the config (model=torchvision, model=custom)
        key = error.full_key
        raise ConfigError(f"{key} must be set (e.g. {key}=...) for this choice") from error
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


def check_overrides(arguments: list[str], schema: type = RunConfig) -> None:
    """Check the keys of command-line overrides against the schema before Hydra starts any work."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    candidates = [a for a in arguments if not a.startswith("-") and "=" in a]
    for override in OverridesParser.create().parse_overrides(candidates):
        key = override.key_or_group
        if override.type == OverrideType.CHANGE and "." in key and not key.startswith("hydra."):
            check_key(key, schema)
