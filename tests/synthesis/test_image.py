"""GENIE-D's image parametrization (a generator network and latents) and swing convolution."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfq.pipeline import sample_path
from dfq.synthesis.batches import synthesize
from dfq.synthesis.generators import GeneratorConfig
from dfq.synthesis.image import ImageShapeError, generator_image
from dfq.synthesis.module import SynthesisModule, TeacherRunner
from dfq.synthesis.priors import swing

from .test_generators import objective, recipe_for


def test_swing_takes_a_shifted_window_of_the_reflect_padded_input():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    assert swing(x, 0, torch.Generator()) is x
    padded = F.pad(x, [1] * 4, mode="reflect")
    windows = {(i, j): padded[..., i : i + 5, j : j + 6] for i in range(3) for j in range(3)}
    random = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        out = swing(x, 1, random)
        matches = [offset for offset, window in windows.items() if torch.equal(out, window)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) >= 5  # the offset moves between steps


def test_runner_swings_only_strided_convolutions(tiny_entry):
    recipe = recipe_for("genie_d")
    x = torch.randn(4, 3, 8, 8)
    plain = tiny_entry.module(x)
    runner = TeacherRunner(tiny_entry.module, recipe)
    strided = [m for m in tiny_entry.module.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(runner.swing_hooks) == len(strided) == 1
    swung = [runner(x, record_bn=False) for _ in range(10)]
    runner.close()
    assert not tiny_entry.module.conv2._forward_pre_hooks  # closed: the teacher is left as it was
    assert any(not torch.allclose(s, plain) for s in swung)
    assert torch.equal(tiny_entry.module(x), plain)


def test_generator_image_is_seeded_and_standardized_per_channel():
    first = generator_image(lambda: None, (16, 3, 8, 8), seed=5, latent_dim=32)
    again = generator_image(lambda: None, (16, 3, 8, 8), seed=5, latent_dim=32)
    x = first()
    assert x.shape == (16, 3, 8, 8)
    assert torch.equal(x, again())
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.var((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    groups = first.parameter_groups(0.1, 0.01)
    assert [g["lr"] for g in groups] == [0.1, 0.01] and groups[0]["params"] == [first.latents]


def test_generator_image_needs_sides_divisible_by_four():
    with pytest.raises(ImageShapeError, match="divisible by 4.*30x32"):
        generator_image(lambda: None, (4, 3, 30, 32), seed=0, latent_dim=8)


def test_genie_d_lowers_the_bn_objective_and_stores_valid_pixels(tiny_entry):
    recipe = recipe_for("genie_d", "generator.iterations=40")
    assert recipe.image == "generator" and recipe.swing == 1
    start = SynthesisModule(tiny_entry.module, tiny_entry.normalization, recipe, 16, None, 0).samples()
    samples = synthesize(tiny_entry, recipe)
    pixels = dataclasses.replace(recipe, image="pixels", swing=0)
    before = objective(tiny_entry, pixels, start, None)
    after = objective(tiny_entry, pixels, samples.x, None)
    assert after < 0.8 * before, f"BNS objective {before:.4f} -> {after:.4f}"
    low, high = tiny_entry.normalization.bounds(samples.x)
    assert (samples.x >= low - 1e-6).all() and (samples.x <= high + 1e-6).all()


def test_later_options_at_their_defaults_keep_the_cache_key():
    plain = GeneratorConfig()
    assert not {"image", "latent_dim", "network_lr", "swing"} & set(plain.identity())
    genie = GeneratorConfig(image="generator", swing=1)
    assert genie.identity()["image"] == "generator" and genie.identity()["swing"] == 1
    assert "latent_dim" not in genie.identity()

    class Config:
        paths = type("Paths", (), {"sample_cache": "cache"})

    teacher = type("Teacher", (), {"name": "m"})
    assert sample_path(Config, teacher, plain, None) != sample_path(Config, teacher, genie, None)


def test_bad_image_options_are_one_line_errors():
    with pytest.raises(
        ValueError, match=r"generator.image='latent' is invalid; expected one of \['generator', 'pixels'\]"
    ):
        GeneratorConfig(image="latent")
    with pytest.raises(ValueError, match=r"generator.blur_sigma=1.0 .*needs generator.image=pixels"):
        GeneratorConfig(image="generator", blur_sigma=1.0)
