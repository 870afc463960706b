"""scripts/sample_ranges.py: activation ranges per recipe, from saved sample sets."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dfq.config import CalibrateConfig
from dfq.data.sample_set import SampleSet
from dfq.quant.policy import QuantPolicy
from dfq.quant.quantizer import QuantSpec
from tests.conftest import load_script


def test_ranges_follow_the_samples_and_group_by_recipe(shared_dir, tmp_path, capsys):
    recipe = {"name": "real", "source": "real", "num_samples": 32}
    base = SampleSet((torch.rand(32, 3, 32, 32) - 0.5) * 2, None, {"recipe": recipe})
    base.save(tmp_path / "a.pt")
    wide = SampleSet(base.x * 2, None, {"recipe": dict(recipe, name="wide")})
    wide.save(tmp_path / "b.pt")
    script = load_script("sample_ranges")
    sets = [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    assert (
        script.main(["experiment=cifar10_resnet20", f"paths.shared_dir={shared_dir}", "--sets", *sets]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| W4A4 quantizer | real, 32 | wide, 32 |"
    row = next(line for line in lines if line.startswith("| conv1.input_quantizer |"))
    narrow, broad = (float(v) for v in row.strip("|").split("|")[1:])
    assert broad == pytest.approx(2 * narrow, rel=0.02)  # the network input's range doubles with it


def test_a_missing_set_is_one_line(tmp_path, capsys):
    script = load_script("sample_ranges")
    assert script.main(["--sets", str(tmp_path / "none.pt")]) == 2
    assert capsys.readouterr().err.startswith("sample_ranges: error:")


def test_recipes_differing_only_in_flips_get_their_own_column():
    recipe = {"name": "bn_stats", "source": "synthesis", "num_samples": 8, "iterations": 5, "batch_size": 4}
    label = load_script("sample_ranges").recipe_label
    plain = label(SampleSet(torch.zeros(1), None, {"recipe": dict(recipe, pad_crop=4)}))
    flipped = label(SampleSet(torch.zeros(1), None, {"recipe": dict(recipe, pad_crop=4, flip=True)}))
    assert (plain, flipped) == ("bn_stats, crop 4, 8, 5 it x 4", "bn_stats, crop 4, flip, 8, 5 it x 4")


def test_ranges_do_not_depend_on_what_was_calibrated_before(tiny_entry):
    # a percentile observer that keeps a random 100 of each batch's values: the ranges depend on the RNG
    spec = QuantSpec(observer="percentile", observer_options={"max_values": 100})
    config = SimpleNamespace(quant=QuantPolicy(activation=spec), calibrate=CalibrateConfig())
    script = load_script("sample_ranges")
    samples = SampleSet(torch.randn(64, 3, 8, 8), None, {})
    first = script.activation_highs(script.calibrated(tiny_entry.module, samples, config))
    torch.rand(7)  # another set's calibration would move the global RNG on
    again = script.activation_highs(script.calibrated(tiny_entry.module, samples, config))
    assert first and first == again
