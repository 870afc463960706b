"""The unit-swap diagnostic: which reconstruction unit of one student carries its gap to another."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from dfq.evaluate.unit_swap import unit_swap_top1, with_units
from dfq.models.cifar_resnet import cifar_resnet
from dfq.quant.blocks import find_units
from dfq.quant.calibrate import calibrate
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize
from tests.conftest import load_script


def students(x: torch.Tensor) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A 2-bit and an 8-bit student of one random CIFAR ResNet-8."""
    torch.manual_seed(0)
    model = cifar_resnet(8).eval()
    return tuple(calibrate(quantize(model, QuantPolicy(w_bits=b, a_bits=b), x[:2]), x) for b in (2, 8))


def test_swapping_every_unit_gives_the_donor_and_leaves_the_base_alone():
    x = torch.randn(16, 3, 32, 32)
    base, donor = students(x)
    before = base(x)
    names = [unit.name for unit in find_units(base, x[:1])]
    assert torch.equal(with_units(base, donor, names)(x), donor(x))
    assert torch.equal(with_units(base, donor, [])(x), before) and torch.equal(base(x), before)
    assert not torch.equal(with_units(base, donor, names[:1])(x), before)  # one unit changes the output


def test_the_table_ends_at_the_donor_and_scores_the_donor_labels():
    x = torch.randn(64, 3, 32, 32)
    base, donor = students(x)
    labels = donor(x).argmax(1)  # the donor is right on every image by construction
    rows = unit_swap_top1(base, donor, TensorDataset(x, labels), x[:1], batch_size=32)
    assert [row["unit"] for row in rows[1:-1]] == [unit.name for unit in find_units(base, x[:1])]
    assert rows[-1]["alone"] == 100.0 and rows[-2]["prefix"] == 100.0
    assert rows[0]["alone"] < 100.0  # the 2-bit base disagrees with the donor somewhere


def test_the_script_names_a_run_without_a_student(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert load_script("unit_swap").main([str(tmp_path / "run"), str(tmp_path / "run")]) == 2
    assert "students/<source>/quantized.pt" in capsys.readouterr().err
