"""Where the accuracy gap between two students of one network lies: the base student with one
reconstruction unit, or the first k units, taken from a donor student (its weights, rounding and
quantizer encodings), scored on labelled images. A diagnostic for block reconstruction (BRECQ's
units, Li et al., ICLR 2021; dfq.quant.blocks), e.g. a BNS-reconstructed student against a
real-image one."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import Dataset

from dfq.evaluate import top1
from dfq.models.submodules import set_submodule
from dfq.quant.blocks import find_units


def with_units(base: nn.Module, donor: nn.Module, names: list[str]) -> nn.Module:
    """A copy of `base` whose submodules `names` are copies of `donor`'s."""
    hybrid = copy.deepcopy(base)
    for name in names:
        set_submodule(hybrid, name, copy.deepcopy(donor.get_submodule(name)))
    return hybrid


def unit_swap_top1(
    base: nn.Module, donor: nn.Module, dataset: Dataset, example: torch.Tensor, batch_size: int = 500
) -> list[dict]:
    """One row per unit in forward order: top-1 % of `base` with that unit alone from `donor`, and with
    every unit up to it from `donor`; the first row is `base` itself, the last `donor`."""
    names = [unit.name for unit in find_units(base, example)]
    rows = [{"unit": "(none)", "alone": top1(base, dataset, batch_size)}]
    for k, name in enumerate(names):
        alone = top1(with_units(base, donor, [name]), dataset, batch_size)
        prefix = top1(with_units(base, donor, names[: k + 1]), dataset, batch_size)
        rows.append({"unit": name, "alone": alone, "prefix": prefix})
    rows.append({"unit": "(all: donor)", "alone": top1(donor, dataset, batch_size)})
    return rows
