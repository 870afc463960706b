"""Every generator config lowers its own objective on a tiny BN network; priors, clamping and logging."""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from timm.layers import BatchNormAct2d
from torch import nn

from dfq.config import ConfigError, register_configs, validate
from dfq.models.load import ModelEntry, freeze
from dfq.record import log_sample_grid
from dfq.synthesis.batches import synthesize
from dfq.synthesis.bn_stats import NoBatchNormError
from dfq.synthesis.generators import GeneratorConfig, GeneratorError
from dfq.synthesis.losses import LossContext, total_variation_l2
from dfq.synthesis.module import SynthesisModule, initial_inputs

register_configs()
OPTIMIZED = [
    "inception",
    "inception_uncapped",
    "bn_stats",
    "bn_stats_tv",
    "bn_stats_inception",
    "zeroq",
    "deepinversion",
]
BN_BASED = ["bn_stats", "bn_stats_tv", "bn_stats_inception", "zeroq", "deepinversion", "genie_d"]


def recipe_for(name: str, *overrides: str) -> GeneratorConfig:
    """The generator config as the command line composes it, at a unit-test budget."""
    return copy.deepcopy(composed_recipe(name, overrides))


@functools.cache
def composed_recipe(name: str, overrides: tuple[str, ...]) -> GeneratorConfig:
    budget = ["generator.num_samples=16", "generator.batch_size=16"]
    budget += [] if name == "gaussian" else ["generator.iterations=20"]
    with initialize_config_module("dfq.conf", version_base="1.3"):
        cfg = compose(
            "config", overrides=["paths.output_dir=/tmp/dfq-test", f"generator={name}", *budget, *overrides]
        )
    return validate(cfg).generator


def objective(entry: ModelEntry, recipe: GeneratorConfig, x: torch.Tensor, labels) -> float:
    """The recipe's loss on `x`, without random crops, jitter or flips (so two batches compare exactly)."""
    still = dataclasses.replace(recipe, pad_crop=0, jitter=0, flip=False)
    module = SynthesisModule(entry.module, entry.normalization, still, len(x), labels, 0, entry.name)
    with torch.no_grad():
        module.inputs.copy_(x)
        return module.losses()[0].item()


def start_of(entry: ModelEntry, recipe: GeneratorConfig) -> torch.Tensor:
    """The first batch's starting point (same seed derivation as `synthesize`)."""
    seed = torch.Generator().manual_seed(recipe.seed * 1_000_003)
    return initial_inputs(recipe, entry.normalization, recipe.batch_size, seed)


@pytest.mark.parametrize("name", OPTIMIZED)
def test_generator_lowers_its_objective(tiny_entry, name: str):
    recipe = recipe_for(name)
    samples = synthesize(tiny_entry, recipe)
    labels = samples.y
    before = objective(tiny_entry, recipe, start_of(tiny_entry, recipe), labels)
    after = objective(tiny_entry, recipe, samples.x, labels)
    assert after < 0.97 * before, f"{name}: objective {before:.4f} -> {after:.4f}"
    low, high = tiny_entry.normalization.bounds(samples.x)
    assert (samples.x >= low - 1e-6).all() and (samples.x <= high + 1e-6).all()


def roughness(x: torch.Tensor) -> float:
    """Mean squared difference of neighbouring pixels, the quantity tv_l2 penalizes."""
    return total_variation_l2(LossContext(x, x.new_zeros(len(x), 1), None, [])).item()


def test_bn_stats_tv_makes_smoother_samples_than_bn_stats(tiny_entry):
    plain = synthesize(tiny_entry, recipe_for("bn_stats", "generator.iterations=60"))
    smooth = synthesize(tiny_entry, recipe_for("bn_stats_tv", "generator.iterations=60"))
    assert roughness(smooth.x) < 0.7 * roughness(plain.x)


def test_teacher_stays_frozen_in_eval_mode(tiny_entry):
    state = {k: v.clone() for k, v in tiny_entry.module.state_dict().items()}
    synthesize(tiny_entry, recipe_for("bn_stats_inception", "generator.iterations=3"))
    assert not tiny_entry.module.training
    for key, value in tiny_entry.module.state_dict().items():
        assert torch.equal(value, state[key]), key  # BN running statistics included


def test_gaussian_takes_per_channel_mean_and_std(tiny_entry):
    recipe = recipe_for(
        "gaussian",
        "generator.num_samples=512",
        "generator.batch_size=512",
        "generator.init_mean=[0.0,0.5,-0.5]",
        "generator.init_std=[1.0,0.1,0.2]",
    )
    x = synthesize(tiny_entry, recipe).x
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.tensor([0.0, 0.5, -0.5]), atol=0.02, rtol=0)
    torch.testing.assert_close(std[1:], torch.tensor([0.1, 0.2]), atol=0.01, rtol=0)
    assert 0.85 < std[0] < 1.0  # N(0, 1) clamped to the valid range [-2, 2]
    with pytest.raises(GeneratorError, match=r"init_mean.*2 values.*3 channels"):
        synthesize(tiny_entry, recipe_for("gaussian", "generator.init_mean=[0.0,1.0]"))


@pytest.mark.parametrize("name", BN_BASED)
def test_bn_generators_refuse_a_model_without_batchnorm(tiny_no_bn_entry, name: str):
    with pytest.raises(NoBatchNormError, match=r"'tiny_no_bn'.*generator=inception"):
        synthesize(tiny_no_bn_entry, recipe_for(name, "generator.iterations=1"))


def test_gaussian_and_inception_work_without_batchnorm(tiny_no_bn_entry):
    assert len(synthesize(tiny_no_bn_entry, recipe_for("gaussian"))) == 16
    recipe = recipe_for("inception")
    samples = synthesize(tiny_no_bn_entry, recipe)
    start = start_of(tiny_no_bn_entry, recipe)
    assert objective(tiny_no_bn_entry, recipe, samples.x, samples.y) < objective(
        tiny_no_bn_entry, recipe, start, samples.y
    )


def test_timm_batchnorm_act_model_is_synthesized_for():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        BatchNormAct2d(8),
        nn.Conv2d(8, 8, 3, padding=1),
        BatchNormAct2d(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    model.train()
    with torch.no_grad():
        for _ in range(10):
            model(torch.randn(16, 3, 8, 8) * 0.5 + 0.2)
    from dfq.models.normalization import Normalization

    entry = ModelEntry("timm_like", freeze(model), Normalization((0.5,) * 3, (0.25,) * 3, 8, 4))
    recipe = recipe_for("bn_stats")
    samples = synthesize(entry, recipe)
    assert objective(entry, recipe, samples.x, None) < 0.5 * objective(
        entry, recipe, start_of(entry, recipe), None
    )


def test_layer_weighting_and_first_layer_multiplier(tiny_entry):
    x = start_of(tiny_entry, recipe_for("bn_stats"))
    uniform = objective(tiny_entry, recipe_for("bn_stats"), x, None)
    mean = objective(tiny_entry, recipe_for("bn_stats", "generator.layer_weighting=mean"), x, None)
    assert mean == pytest.approx(uniform / 2, rel=1e-5)  # two BN layers
    recipe = recipe_for("bn_stats", "generator.first_bn_multiplier=10")
    module = SynthesisModule(tiny_entry.module, tiny_entry.normalization, recipe, 4, None, 0)
    assert module.layer_weights.tolist() == [10.0, 1.0]


def test_blurred_updates_are_smoother(tiny_entry):
    def roughness(blur: float) -> float:
        recipe = recipe_for("bn_stats", f"generator.blur_sigma={blur}")
        change = synthesize(tiny_entry, recipe).x - start_of(tiny_entry, recipe)
        return float((change[..., 1:] - change[..., :-1]).norm() / change.norm())

    assert roughness(1.0) < 0.7 * roughness(0.0)


def test_labels_follow_the_chosen_classes(tiny_entry):
    samples = synthesize(
        tiny_entry, recipe_for("inception", "generator.classes=[2,3]", "generator.iterations=1")
    )
    assert samples.y.tolist() == [2, 3] * 8
    with pytest.raises(GeneratorError, match="classes"):
        synthesize(tiny_entry, recipe_for("inception", "generator.classes=[7]"))


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("generator.labels=sometimes", "generator.labels='sometimes' is invalid"),
        ("generator.layer_weighting=deep", "layer_weighting"),
        ("generator.init_std=-1.0", "init_std"),
        ("generator.schedule=step", "schedule"),
        ("generator.pad_crop=-1", "generator.pad_crop=-1 is out of range"),
        ("+generator.losses.hard_cross_entropy=10", "hard_cross_entropy, which needs generator.labels"),
    ],
)
def test_bad_recipe_values_name_the_key(override: str, needle: str):
    with pytest.raises(ConfigError, match=needle):
        recipe_for("bn_stats", override)


def test_per_term_and_per_layer_values_reach_the_csv_logger(tiny_entry, tmp_path: Path):
    logger = CSVLogger(tmp_path, name="csv")
    recipe = recipe_for(
        "bn_stats_inception",
        "generator.iterations=6",
        "generator.log_every=3",
        "generator.num_samples=8",
        "generator.batch_size=4",
    )
    synthesize(tiny_entry, recipe, trainer_options={"logger": logger})
    with open(Path(logger.log_dir) / "metrics.csv") as table:
        rows = list(csv.DictReader(table))
    assert [int(r["step"]) for r in rows] == [0, 3, 5, 6, 9, 11]  # two batches of six steps
    for key in (
        "synthesis/loss",
        "synthesis/bn_kl",
        "synthesis/cross_entropy",
        "bn_divergence/bn1",
        "bn_divergence/bn2",
        "bn_loss/bn_kl/bn1",
        "synthesis/bn_divergence_mean",
    ):
        assert rows[0][key] != "", key
    assert float(rows[2]["synthesis/bn_kl"]) < float(rows[0]["synthesis/bn_kl"])


def test_sample_grid_goes_to_wandb_only(tiny_entry):
    samples = synthesize(tiny_entry, recipe_for("gaussian"))
    logged = []
    wandb = object.__new__(WandbLogger)  # no run started: only the image call is observed
    wandb.log_image = lambda key, images, **kwargs: logged.append((key, images[0].shape))
    assert log_sample_grid(wandb, samples, tiny_entry.normalization, "samples/gaussian")
    assert logged and logged[0][0] == "samples/gaussian" and logged[0][1][-1] == 3
    assert not log_sample_grid(CSVLogger("/tmp"), samples, tiny_entry.normalization, "samples/gaussian")
    assert not log_sample_grid(None, samples, tiny_entry.normalization, "samples/gaussian")
