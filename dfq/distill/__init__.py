"""Quantization-aware knowledge distillation from the full-precision teacher."""
