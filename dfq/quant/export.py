"""Quantized checkpoints that evaluate without the training code's state.

`export_quantized` writes a plain state dict (integer weights, scales and zero points, everything else
in floating point) and, beside it, a JSON of per-tensor encodings plus the modules the student
replaced. `load_quantized` rebuilds the fake-quantized model on the float architecture from the two.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfq.errors import UserError
from dfq.io import save_json, save_torch
from dfq.models.submodules import set_submodule
from dfq.quant.fake_quant import quantize_to_int
from dfq.quant.modules import QuantAct, QuantAdd, QuantConv2d, QuantLinear
from dfq.quant.quantizer import Quantizer, QuantSpec

FORMAT = "dfq-quantized/1"
WRAPPERS: dict[str, type[nn.Module]] = {
    "conv2d": QuantConv2d,
    "linear": QuantLinear,
    "activation": QuantAct,
    "residual_add": QuantAdd,
}


class ExportError(UserError):
    """A quantized export is missing, malformed, or does not fit the architecture it is loaded into."""


def encodings_path(path: str | Path) -> Path:
    """Where the encodings JSON of the export at `path` lives: same name, `.json`."""
    return Path(path).with_suffix(".json")


def quantizer_encoding(name: str, quantizer: Quantizer) -> dict[str, Any]:
    """One tensor's encoding: name, bits, granularity, integer range, scale and zero point(s)."""
    scale, zero_point, qmin, qmax = quantizer.parameters_now()
    spec = quantizer.spec
    return {
        "name": name,
        "bits": spec.bits,
        "granularity": spec.granularity,
        "channel_axis": quantizer.channel_axis,
        "symmetric": spec.symmetric,
        "narrow_range": spec.narrow_range,
        "qmin": qmin,
        "qmax": qmax,
        "scale": scale.flatten().tolist(),
        "zero_point": [int(z) if float(z).is_integer() else z for z in zero_point.flatten().tolist()],
        "integer_zero_point": spec.integer_zero_point,
    }


def integer_weight(weight: torch.Tensor, quantizer: Quantizer) -> torch.Tensor:
    """The weight's integer codes, in int8 (signed grids) or uint8 (unsigned)."""
    scale, zero_point, qmin, qmax = quantizer.parameters_now()
    codes = quantize_to_int(
        weight.detach(),
        quantizer.broadcast(scale, weight),
        quantizer.broadcast(zero_point, weight),
        qmin,
        qmax,
    )
    return codes.to(torch.int8 if qmin < 0 else torch.uint8)


@torch.no_grad()
def refresh_weight_ranges(model: nn.Module) -> None:
    """Re-derive dynamic weight quantizers' ranges from the current weights (stale after an update)."""
    for module in model.modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if isinstance(quantizer, Quantizer) and quantizer.spec.dynamic:
            quantizer(module.weight)


def _wrapper_kind(module: nn.Module) -> str | None:
    return next((kind for kind, cls in WRAPPERS.items() if type(module) is cls), None)


@torch.no_grad()
def export_quantized(student: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write the calibrated `student` to `path` (state dict) and its encodings JSON; returns the JSON path."""
    refresh_weight_ranges(student)
    modules = dict(student.named_modules())
    wrappers = {name: kind for name, m in modules.items() if (kind := _wrapper_kind(m))}
    quantizers = {n: m for n, m in modules.items() if isinstance(m, Quantizer) and m.spec.enabled}
    uncalibrated = [n for n, q in quantizers.items() if not q.calibrated]
    if uncalibrated:
        raise ExportError(
            f"cannot export an uncalibrated student (first: {uncalibrated[0]}); run calibrate first"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in student.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in quantizers and leaf != "scale" and leaf != "zero_point":
            continue  # learned clipping bounds: the scale and zero point below encode them
        state[key] = value.detach().clone()
    for name, quantizer in quantizers.items():
        scale, zero_point, _, _ = quantizer.parameters_now()
        state[f"{name}.scale"] = scale.clone().float()
        integral = quantizer.spec.integer_zero_point
        state[f"{name}.zero_point"] = zero_point.clone().to(torch.int32 if integral else torch.float32)
        owner, _, leaf = name.rpartition(".")
        if leaf == "weight_quantizer":
            state[f"{owner}.weight"] = integer_weight(modules[owner].weight, quantizer)
    inside = tuple(f"{name}." for name in wrappers)
    identities = [
        name
        for name, m in modules.items()
        if isinstance(m, nn.Identity) and name and not name.startswith(inside)
    ]
    document = {
        "format": FORMAT,
        **(metadata or {}),
        "modules": wrappers,
        "identity": identities,
        "encodings": [quantizer_encoding(name, q) for name, q in quantizers.items()],
    }
    save_torch(state, path)
    save_json(document, encodings_path(path))
    return encodings_path(path)


def read_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and encodings document of an export, with a clear error when either is unusable."""
    path = Path(path)
    json_path = encodings_path(path)
    for needed in (path, json_path):
        if not needed.is_file():
            raise ExportError(
                f"quantized export incomplete: {needed} not found (export_quantized writes both)"
            )
    document = json.loads(json_path.read_text())
    if document.get("format") != FORMAT:
        raise ExportError(f"{json_path}: format {document.get('format')!r} is not {FORMAT!r}")
    return torch.load(path, map_location="cpu", weights_only=True), document


def _spec(encoding: dict[str, Any] | None) -> QuantSpec | None:
    if encoding is None:
        return None
    return QuantSpec(
        bits=encoding["bits"],
        granularity=encoding["granularity"],
        symmetric=encoding["symmetric"],
        narrow_range=encoding["narrow_range"],
        integer_zero_point=encoding.get("integer_zero_point", True),
    )


def _restore_quantizer(quantizer: Quantizer, encoding: dict[str, Any]) -> None:
    quantizer.qmin, quantizer.qmax = encoding["qmin"], encoding["qmax"]
    quantizer.scale = torch.tensor(encoding["scale"], dtype=torch.float32)
    quantizer.zero_point = torch.tensor(encoding["zero_point"], dtype=torch.float32)
    if encoding["granularity"] == "per_tensor":
        quantizer.scale, quantizer.zero_point = quantizer.scale.reshape(()), quantizer.zero_point.reshape(())


def _build(model: nn.Module, name: str, kind: str, encodings: dict[str, dict], state: dict) -> nn.Module:
    module = model.get_submodule(name)
    if kind in ("activation", "residual_add"):
        return WRAPPERS[kind](module, _spec(encodings.get(f"{name}.output_quantizer")))
    if f"{name}.bias" in state and module.bias is None:
        module.bias = nn.Parameter(torch.zeros(module.weight.shape[0]))
    weight = _spec(encodings.get(f"{name}.weight_quantizer"))
    inputs = _spec(encodings.get(f"{name}.input_quantizer"))
    return WRAPPERS[kind].from_float(module, weight, inputs)


@torch.no_grad()
def load_quantized(model: nn.Module, path: str | Path) -> nn.Module:
    """Rebuild the quantized model on `model` (the float architecture, weights irrelevant), in place.

    Integer weights become (codes - zero_point) * scale, which the restored weight quantizers map back
    onto the same codes, so the rebuilt model computes what the exported student computed.
    """
    state, document = read_export(path)
    encodings = {e["name"]: e for e in document["encodings"]}
    try:
        for name in document["identity"]:
            if not isinstance(model.get_submodule(name), nn.Identity):
                set_submodule(model, name, nn.Identity())
        for name, kind in document["modules"].items():
            set_submodule(model, name, _build(model, name, kind, encodings, state))
        modules = dict(model.named_modules())
        for name, encoding in encodings.items():
            _restore_quantizer(modules[name], encoding)
        state = dict(state)
        for name in encodings:
            owner, _, leaf = name.rpartition(".")
            if leaf == "weight_quantizer":
                quantizer = modules[name]
                codes = state[f"{owner}.weight"].float()
                zero_point = quantizer.broadcast(quantizer.zero_point, codes)
                state[f"{owner}.weight"] = (codes - zero_point) * quantizer.broadcast(quantizer.scale, codes)
        model.load_state_dict(state)
    except (AttributeError, KeyError, RuntimeError) as error:
        raise ExportError(f"{path} does not fit {type(model).__name__}: {error}") from error
    return model.eval()
