"""Fake quantization: quantizers, observers, quantized modules, layer policy and calibration."""
