"""Layer policy: which conv/linear layers are quantized, at which bits, and where activations are.

Layers are addressed by module-name globs (`layer1.*`) or by graph order (`@0` first, `@1` second,
`@-1` last), so first/last-layer rules never depend on channel counts.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dfq.quant.quantizer import BIT_RANGE, BITS, UNQUANTIZED_BITS, QuantSpec
from dfq.ranges import check_ranges, out_of_range, ranged

PLACEMENTS = ("layer_input", "after_activation")


@dataclass(frozen=True)
class LayerBits:
    """Bit widths of one layer's weight and input (16/32: left in floating point)."""

    w_bits: int
    a_bits: int


@dataclass
class QuantPolicy:
    """The whole quantization recipe of a model (dfq's `quant` config group)."""

    w_bits: int = ranged(4, **BITS)
    a_bits: int = ranged(4, **BITS)
    weight: QuantSpec = field(default_factory=lambda: QuantSpec(granularity="per_channel", dynamic=True))
    activation: QuantSpec = field(default_factory=lambda: QuantSpec(observer="percentile"))
    placement: str = "layer_input"
    first_last_bits: int | None = ranged(None, **BITS)
    overrides: dict[str, dict[str, int]] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    quantize_residual: bool = False  # quantize the output of residual additions the model exposes

    protocol: str = "strict"  # the name recorded beside results, so rows compare like with like

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"quant.placement={self.placement!r} is invalid; valid: {list(PLACEMENTS)}")
        check_ranges(self, "quant")
        for pattern, override in self.overrides.items():
            for key, value in override.items():
                if value not in BIT_RANGE:
                    raise ValueError(out_of_range(f"quant.overrides.{pattern}.{key}", value, BIT_RANGE))

    def layer_bits(self, name: str, index: int, count: int) -> LayerBits | None:
        """Bits for the layer `name`, the `index`-th of `count` in graph order; None if excluded."""
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.exclude):
            return None
        bits = {"w_bits": self.w_bits, "a_bits": self.a_bits}
        if self.first_last_bits is not None and index in (0, count - 1):
            bits = {"w_bits": self.first_last_bits, "a_bits": self.first_last_bits}
        for pattern, override in self.overrides.items():
            if _matches(pattern, name, index, count):
                bits.update(override)
        return LayerBits(**bits)

    def activation_bits(self, name: str) -> int:
        """Bits of an activation (or residual addition) module's output, by name-glob overrides."""
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.exclude):
            return UNQUANTIZED_BITS
        bits = self.a_bits
        for pattern, override in self.overrides.items():
            if not pattern.startswith("@") and fnmatch.fnmatchcase(name, pattern):
                bits = override.get("a_bits", bits)
        return bits


def _matches(pattern: str, name: str, index: int, count: int) -> bool:
    if pattern.startswith("@"):
        wanted = int(pattern[1:])
        return index == (wanted if wanted >= 0 else count + wanted)
    return fnmatch.fnmatchcase(name, pattern)


def spec_for(template: QuantSpec, bits: int) -> QuantSpec | None:
    """The template at `bits`, or None where `bits` means floating point."""
    return template.with_bits(bits) if bits < UNQUANTIZED_BITS else None


def graph_order(model: nn.Module, example: torch.Tensor, kinds: tuple[type[nn.Module], ...]) -> list[str]:
    """Names of the modules of the given kinds in the order a forward pass first calls them."""
    order: list[str] = []
    names = {module: name for name, module in model.named_modules() if isinstance(module, kinds)}

    def record(module: nn.Module, _inputs: Any) -> None:
        if names[module] not in order:
            order.append(names[module])

    handles = [module.register_forward_pre_hook(record) for module in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return order
