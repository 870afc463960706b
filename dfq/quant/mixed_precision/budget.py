"""What a mixed-precision budget limits: one registry, `BUDGETS`, name -> the cost of one layer at its
widths and the cost of everything else, so that a plan's total is the matching `model_size` value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from dfq.quant.mixed_precision.cost import (
    FLOAT_BITS,
    LayerShape,
    layer_bops,
    layer_memory_bits,
    quantizer_bits,
)
from dfq.quant.quantizer import QuantSpec


@dataclass(frozen=True)
class Accounting:
    """What a layer's cost may depend on beyond its own shape: the conv/linear weight count of the
    whole network, and its parameters outside conv/linear layers (BN)."""

    weights: int
    other_parameters: int

    @classmethod
    def of(cls, model: nn.Module, shapes: dict[str, LayerShape]) -> Accounting:
        inside = {id(p) for name in shapes for p in model.get_submodule(name).parameters()}
        others = sum(p.numel() for p in model.parameters() if id(p) not in inside)
        return cls(sum(shape.weights for shape in shapes.values()), others)


LayerCost = Callable[[LayerShape, QuantSpec | None, QuantSpec | None, Accounting], float]


@dataclass(frozen=True)
class Budget:
    """A budget kind: one layer's share at given weight and input specs, and the fixed rest."""

    layer: LayerCost
    rest: Callable[[Accounting], float]
    unit: str


def average_bits_share(shape: LayerShape, weight, inputs, accounting: Accounting) -> float:
    return shape.weights * quantizer_bits(weight) / accounting.weights


def memory_share(shape: LayerShape, weight, inputs, accounting: Accounting) -> float:
    return layer_memory_bits(shape, weight, inputs) / 8


def bops_share(shape: LayerShape, weight, inputs, accounting: Accounting) -> float:
    return float(layer_bops(shape, quantizer_bits(weight), quantizer_bits(inputs)))


BUDGETS: dict[str, Budget] = {
    "avg_weight_bits": Budget(average_bits_share, lambda accounting: 0.0, "average weight bits"),
    "weight_bytes": Budget(memory_share, lambda a: a.other_parameters * FLOAT_BITS / 8, "weight bytes"),
    "bops": Budget(bops_share, lambda accounting: 0.0, "bit-operations per sample"),
}
