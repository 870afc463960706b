"""The units of block reconstruction (BRECQ, Li et al., ICLR 2021): residual blocks found by type,
every other Conv2d/Linear a unit of its own (so any model works), in the order a forward pass
reaches them; the first and last layers of a ResNet or MobileNet lie outside its blocks, so they
come out as units of their own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from dfq.quant.policy import graph_order

# "module:Class" of every residual block type reconstructed as one unit; types whose package is
# not installed are left out
BLOCK_TYPES = (
    "dfq.models.cifar_resnet:BasicBlock",
    "dfq.models.wrn:WideBlock",
    "torchvision.models.resnet:BasicBlock",
    "torchvision.models.resnet:Bottleneck",
    "torchvision.models.mobilenetv2:InvertedResidual",
    "timm.models.resnet:BasicBlock",
    "timm.models.resnet:Bottleneck",
    "timm.models._efficientnet_blocks:InvertedResidual",
    "timm.models._efficientnet_blocks:DepthwiseSeparableConv",
)
LAYER_TYPES = (nn.Conv2d, nn.Linear)  # the quantized layers (QuantConv2d, QuantLinear) included


@cache
def block_types() -> tuple[type[nn.Module], ...]:
    """The importable classes of `BLOCK_TYPES`."""
    found = []
    for path in BLOCK_TYPES:
        module, _, name = path.partition(":")
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


@dataclass(frozen=True)
class Unit:
    """One reconstruction unit: a module name and whether it is a block or a single layer."""

    name: str
    kind: str  # "block" or "layer"


def find_units(model: nn.Module, example: torch.Tensor) -> list[Unit]:
    """The model's reconstruction units in forward order: outermost registered blocks, and every
    Conv2d/Linear outside them."""
    blocks = block_types()
    order = graph_order(model, example, (*blocks, *LAYER_TYPES))
    units: list[Unit] = []
    for name in order:
        if any(name.startswith(f"{unit.name}.") for unit in units if unit.kind == "block"):
            continue
        module = model.get_submodule(name)
        units.append(Unit(name, "block" if isinstance(module, blocks) else "layer"))
    return units
