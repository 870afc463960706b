"""Choose each layer's weight bits for a size budget from samples, before any student step runs:
measure each layer's sensitivity (registry `SENSITIVITIES`), solve for the least summed sensitivity
under the budget (registry `BUDGETS`), and write the widths by layer name into the layer policy.
ZeroQ (Cai et al., CVPR 2020) chose widths this way on its synthetic data; HAWQ-V2/V3 (Dong et al.,
Yao et al.) with Hessian traces and an integer program."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from dfq.io import atomic_path, save_json
from dfq.quant.mixed_precision.budget import BUDGETS, Accounting
from dfq.quant.mixed_precision.cost import LAYER_KINDS, LayerShape, layer_shapes
from dfq.quant.mixed_precision.pareto import MeasuredPoint, plot_frontier
from dfq.quant.mixed_precision.sensitivity import SENSITIVITIES, SensitivityOptions
from dfq.quant.mixed_precision.solver import Table, cheapest, solve, total
from dfq.quant.policy import LayerBits, QuantPolicy, graph_order, spec_for
from dfq.quant.quantizer import BIT_RANGE, BITS
from dfq.ranges import check_ranges, out_of_range, ranged

METHODS = ("none", "saved", *SENSITIVITIES)  # none: one width for all; saved: widths from a YAML file


@dataclass
class MixedPrecisionConfig:
    """dfq's `mixed_precision` group: the sensitivity measure (or `saved` widths from `path`), the
    candidate widths, the budget (`budget_kind` <= `budget`) and what the measurement may cost."""

    method: str = "none"
    candidates: list[int] = field(default_factory=lambda: [2, 3, 4, 6, 8])
    budget_kind: str = "avg_weight_bits"
    budget: float | None = ranged(None, 0.0)
    num_samples: int | None = ranged(256, 1)  # the first N samples (None: all)
    batch_size: int = ranged(128, 1)
    probes: int = ranged(16, 1)  # Hutchinson probes per batch (hawq)
    path: str | None = None  # saved: the per-layer YAML an earlier run wrote
    frontier_points: int = ranged(24, 2)  # budgets between the cheapest and dearest choice (Pareto plot)

    def __post_init__(self) -> None:
        check_ranges(self, "mixed_precision")
        if self.method not in METHODS:
            raise ValueError(f"mixed_precision.method={self.method!r} is invalid; valid: {list(METHODS)}")
        if self.budget_kind not in BUDGETS:
            raise ValueError(
                f"mixed_precision.budget_kind={self.budget_kind!r} is invalid; valid: {sorted(BUDGETS)}"
            )
        for bits in self.candidates:
            if bits not in BIT_RANGE or bits > BITS["high"]:
                raise ValueError(out_of_range("mixed_precision.candidates", bits, BIT_RANGE))
        if self.method in SENSITIVITIES and self.budget is None:
            raise ValueError(f"mixed_precision={self.method} needs a budget, e.g. mixed_precision.budget=3.0")
        if self.method == "saved" and not self.path:
            raise ValueError(
                "mixed_precision=saved needs mixed_precision.path=<widths YAML of an earlier run>"
            )

    @property
    def active(self) -> bool:
        return self.method != "none"

    def describe(self) -> dict[str, Any]:
        """The options that decide the widths (a results column each)."""
        if self.method == "saved":
            return {"method": "saved", "path": self.path}
        keep = ("method", "budget_kind", "budget", "candidates", "num_samples")
        described = {name: getattr(self, name) for name in keep}
        return described | ({"probes": self.probes} if self.method == "hawq" else {})


@dataclass
class Plan:
    """Each conv/linear layer's planned widths (None: left in floating point), in graph order."""

    bits: dict[str, LayerBits | None]
    shapes: dict[str, LayerShape]
    accounting: Accounting

    @classmethod
    def of(cls, model: nn.Module, policy: QuantPolicy, example: torch.Tensor) -> Plan:
        layers = graph_order(model, example[:2], LAYER_KINDS)
        bits = {name: policy.layer_bits(name, i, len(layers)) for i, name in enumerate(layers)}
        shapes = layer_shapes(model, example)
        return cls(bits, shapes, Accounting.of(model, shapes))

    def searchable(self, policy: QuantPolicy) -> list[str]:
        """The layers at the policy's default weight width: a protocol's pinned layers (first/last at
        8 bits, exclusions) keep theirs."""
        return [name for name, bits in self.bits.items() if bits is not None and bits.w_bits == policy.w_bits]

    def cost(self, name: str, w_bits: int, policy: QuantPolicy, kind: str) -> float:
        """One layer's share of budget `kind` at `w_bits` (its input at its planned bits)."""
        planned = self.bits[name]
        weight = spec_for(policy.weight, w_bits) if planned is not None else None
        inputs = spec_for(policy.activation, planned.a_bits) if planned is not None else None
        return BUDGETS[kind].layer(self.shapes[name], weight, inputs, self.accounting)

    def total(self, policy: QuantPolicy, kind: str, widths: dict[str, int] | None = None) -> float:
        """Budget `kind` of the whole network with `widths` in place of the planned weight bits."""
        widths = widths or {}
        shares = (self.cost(name, widths.get(name, bits.w_bits if bits else 32), policy, kind)
                  for name, bits in self.bits.items())  # fmt: skip
        return BUDGETS[kind].rest(self.accounting) + sum(shares)


def with_widths(policy: QuantPolicy, widths: dict[str, int]) -> QuantPolicy:
    """The policy with each named layer's weight bits overridden (after the protocol's own rules)."""
    overrides = dict(policy.overrides)
    for name, bits in widths.items():
        overrides[name] = {**overrides.get(name, {}), "w_bits": bits}
    return dataclasses.replace(policy, overrides=overrides)


def frontier(sensitivity: Table, costs: Table, fixed: float, points: int) -> list[dict[str, Any]]:
    """Least summed sensitivity at `points` budgets from the cheapest to the dearest choice: the
    Pareto frontier of size against sensitivity (each point's widths included)."""
    low, high = cheapest(costs), sum(max(options.values()) for options in costs.values())
    result = []
    for limit in np.linspace(low, high, points):
        widths = solve(sensitivity, costs, float(limit))
        result.append({"size": fixed + total(costs, widths), "sensitivity": total(sensitivity, widths),
                       "widths": widths})  # fmt: skip
    return result


def choose_bits(
    model: nn.Module, samples: torch.Tensor, policy: QuantPolicy, options: MixedPrecisionConfig
) -> tuple[QuantPolicy, dict[str, Any] | None]:
    """The policy with per-layer weight widths chosen on `samples` (the float network `model`, which
    the student will be quantized from), and a report: the options, each layer's sensitivity, the
    widths, the budget reached and the frontier. `method=none` returns the policy untouched."""
    if not options.active:
        return policy, None
    plan = Plan.of(model, policy, samples)
    if options.method == "saved":
        widths = load_widths(options.path, list(plan.bits))
        report = {"options": options.describe(), "widths": widths}
        return with_widths(policy, widths), report | measured(plan, policy, widths)
    layers = plan.searchable(policy)
    chosen = samples[: options.num_samples] if options.num_samples else samples
    measure = SensitivityOptions(options.batch_size, options.probes)
    measure_sensitivity = SENSITIVITIES[options.method]
    sensitivity = measure_sensitivity(model, chosen, layers, options.candidates, policy.weight, measure)
    kind = options.budget_kind
    costs = {name: {b: plan.cost(name, b, policy, kind) for b in options.candidates} for name in layers}
    fixed = plan.total(policy, kind) - sum(plan.cost(name, policy.w_bits, policy, kind) for name in layers)
    try:
        widths = solve(sensitivity, costs, options.budget - fixed)
    except ValueError as error:
        unit = BUDGETS[kind].unit
        raise ValueError(f"mixed_precision.budget={options.budget} ({unit}): {error}") from error
    report = {
        "options": options.describe(),
        "widths": widths,
        "sensitivity": {name: {str(b): v for b, v in row.items()} for name, row in sensitivity.items()},
        "summed_sensitivity": total(sensitivity, widths),
        "frontier": frontier(sensitivity, costs, fixed, options.frontier_points),
    }
    return with_widths(policy, widths), report | measured(plan, policy, widths)


def measured(plan: Plan, policy: QuantPolicy, widths: dict[str, int]) -> dict[str, float]:
    """The plan's total under every budget kind (what the student's `model_size` will show)."""
    return {f"planned_{kind}": plan.total(policy, kind, widths) for kind in BUDGETS}


WIDTHS_HEADER = (
    "# dfq mixed precision: weight bits per layer; reuse with\n"
    "# mixed_precision=saved mixed_precision.path=<this file>\n"
)


def save_widths(widths: dict[str, int], path: str | Path) -> None:
    """The chosen widths as YAML, layer name -> {w_bits: b} (the layer policy's override form)."""
    text = yaml.safe_dump({name: {"w_bits": int(bits)} for name, bits in widths.items()}, sort_keys=False)
    with atomic_path(path) as tmp:
        tmp.write_text(WIDTHS_HEADER + text)


def load_widths(path: str | Path, layers: list[str]) -> dict[str, int]:
    """Widths saved by `save_widths`, checked against the model's layer names and dfq's bit range."""
    try:
        content = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as error:
        raise ValueError(f"mixed_precision.path={path}: not readable ({error.strerror})") from error
    widths = {}
    for name, entry in content.items():
        if name not in layers:
            raise ValueError(f"{path}: {name!r} is not a conv/linear layer of this model; valid: {layers}")
        bits = entry.get("w_bits") if isinstance(entry, dict) else None
        if bits not in BIT_RANGE:
            raise ValueError(out_of_range(f"{path}: {name}.w_bits", bits, BIT_RANGE))
        widths[name] = int(bits)
    return widths


# The choice's keys a run's metrics.json keeps; sensitivities and frontier stay in mixed_precision.json.
CHOICE_RECORD = ("options", "widths", "summed_sensitivity", *(f"planned_{kind}" for kind in BUDGETS))


def save_choice(choice: dict[str, Any], out_dir: Path, size: dict[str, float], top1: float) -> None:
    """The widths as reusable YAML (`mixed_precision.yaml`), the whole report as JSON, and the Pareto
    plot of the frontier with this student's measured top-1."""
    save_widths(choice["widths"], out_dir / "mixed_precision.yaml")
    save_json(choice | {"size": size, "top1": top1}, out_dir / "mixed_precision.json")
    if choice.get("frontier"):
        kind = choice["options"]["budget_kind"]
        point = MeasuredPoint(size[kind], top1, f"{kind} <= {choice['options']['budget']}")
        plot_frontier(choice["frontier"], [point], BUDGETS[kind].unit, out_dir / "mixed_precision.png")
