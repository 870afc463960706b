"""ONNX export of a fake-quantized student with QuantizeLinear/DequantizeLinear (QDQ) pairs.

Every calibrated quantizer becomes one QDQ pair through a custom op (`dfq::quantize_dequantize`) that
the dynamo exporter translates. 8-bit grids use int8/uint8. From opset 21 on, grids of 4 bits or
fewer use int4/uint4 (ONNX added them in opset 21; onnxruntime 1.32, the version tested, runs them
per tensor and per channel). Any other width (2-3, 5-7 bits, narrow ranges) keeps the smallest such
container and clips the float input to its own grid's range first, so the exported graph computes
exactly the fake-quantized values.
"""

from __future__ import annotations

import copy
from pathlib import Path

import onnxscript
import torch
from onnx import TensorProto
from torch import nn

from dfq.io import atomic_path
from dfq.models.submodules import set_submodule
from dfq.quant.export import ExportError, refresh_weight_ranges
from dfq.quant.fake_quant import integer_range
from dfq.quant.prepare import quantizers
from dfq.quant.quantizer import Quantizer

MIN_OPSET = 18  # the dynamo exporter's lowest opset
INT4_OPSET = 21
CONTAINERS: dict[tuple[int, int], int] = {
    integer_range(4, True): TensorProto.INT4,
    integer_range(4, False): TensorProto.UINT4,
    integer_range(8, True): TensorProto.INT8,
    integer_range(8, False): TensorProto.UINT8,
}


@torch.library.custom_op("dfq::quantize_dequantize", mutates_args=())
def quantize_dequantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int
) -> torch.Tensor:
    """Fake quantization with ONNX QuantizeLinear semantics (round half to even, saturate)."""
    shape = [1] * x.dim()
    if scale.dim():
        shape[axis] = -1
    s, z = scale.reshape(shape), zero_point.reshape(shape).float()
    return (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s


@quantize_dequantize.register_fake
def _(x, scale, zero_point, qmin, qmax, axis):
    return torch.empty_like(x)


def onnx_translation(opset: int):
    """The ONNX translation of quantize_dequantize at `opset`: QuantizeLinear then DequantizeLinear.

    The zero point arrives as int8/uint8; 4-bit containers cast it to int4/uint4 (opset 21+), which
    makes QuantizeLinear produce 4-bit codes.
    """
    op = getattr(onnxscript, f"opset{opset}")

    def quantize_dequantize_onnx(x, scale, zero_point, qmin: int, qmax: int, axis: int):
        if qmax - qmin < 255:
            zero_point = op.Cast(zero_point, to=CONTAINERS[(qmin, qmax)])
        quantized = op.QuantizeLinear(x, scale, zero_point, axis=axis)
        return op.DequantizeLinear(quantized, scale, zero_point, axis=axis)

    return quantize_dequantize_onnx


def container(qmin: int, qmax: int, int4: bool) -> tuple[int, int]:
    """The smallest ONNX integer range (4 bits only when allowed, else 8) holding [qmin, qmax]."""
    signed = qmin < 0
    for bits in (4, 8) if int4 else (8,):
        low, high = integer_range(bits, signed)
        if low <= qmin and qmax <= high:
            return low, high
    raise ValueError(f"integer range [{qmin}, {qmax}] fits no ONNX quantized type")


class QuantizeDequantize(nn.Module):
    """A frozen quantizer in exportable form: clip to its grid when narrower than the container, QDQ."""

    def __init__(self, quantizer: Quantizer, int4: bool) -> None:
        super().__init__()
        scale, zero_point, self.qmin, self.qmax = quantizer.parameters_now()
        self.register_buffer("scale", scale.clone().float())
        self.container = container(self.qmin, self.qmax, int4)
        integer = torch.int8 if self.container[0] < 0 else torch.uint8
        self.register_buffer("zero_point", zero_point.clone().to(integer))
        self.channel_axis = quantizer.channel_axis
        self.axis = quantizer.channel_axis or 0

    def _shaped(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.channel_axis is None:
            return t
        shape = [1] * x.dim()
        shape[self.channel_axis] = -1
        return t.reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.qmin, self.qmax) != self.container:
            scale, zero_point = self._shaped(self.scale, x), self._shaped(self.zero_point.float(), x)
            x = torch.minimum(
                torch.maximum(x, (self.qmin - zero_point) * scale), (self.qmax - zero_point) * scale
            )
        return quantize_dequantize(x, self.scale, self.zero_point, *self.container, self.axis)


def exportable(student: nn.Module, int4: bool) -> nn.Module:
    """A copy of `student` with every calibrated quantizer replaced by a QuantizeDequantize module."""
    model = copy.deepcopy(student).eval()
    refresh_weight_ranges(model)
    for name, quantizer in quantizers(model).items():
        if not quantizer.spec.integer_zero_point:
            raise ExportError(
                f"{name}: ONNX QuantizeLinear needs integer zero points; set integer_zero_point=true"
            )
        set_submodule(model, name, QuantizeDequantize(quantizer, int4))
    return model


def export_onnx(student: nn.Module, example: torch.Tensor, path: str | Path, opset: int = INT4_OPSET) -> Path:
    """Export the calibrated `student` to ONNX with QDQ nodes (dynamic batch); returns `path`."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset={opset} is too old; valid: {MIN_OPSET} or newer ({INT4_OPSET}+ for int4)")
    model = exportable(student, int4=opset >= INT4_OPSET)
    with atomic_path(path) as tmp:
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            opset_version=opset,
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            custom_translation_table={torch.ops.dfq.quantize_dequantize.default: onnx_translation(opset)},
            verbose=False,
        )
    return Path(path)
