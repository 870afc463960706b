"""Data-free mixed precision: per-layer weight (and optionally input) widths for a size budget, chosen
on samples."""

from dfq.quant.mixed_precision.cost import model_size
from dfq.quant.mixed_precision.plan import (
    MixedPrecisionConfig,
    choose_bits,
    load_widths,
    save_choice,
    save_widths,
)

__all__ = ["MixedPrecisionConfig", "choose_bits", "load_widths", "model_size", "save_choice", "save_widths"]
