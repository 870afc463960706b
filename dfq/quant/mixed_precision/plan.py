"""Choose each layer's weight bits (and optionally its input bits) for a size budget from samples,
before any student step runs: measure each layer's sensitivity (registry `SENSITIVITIES`), solve for
the least summed sensitivity under the budget (registry `BUDGETS`), and write the widths by layer name
into the layer policy.
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
from dfq.quant.mixed_precision.sensitivity import SENSITIVITIES, SensitivityOptions, zeroq_input_sensitivity
from dfq.quant.mixed_precision.solver import Table, cheapest, solve, total
from dfq.quant.policy import LayerBits, QuantPolicy, graph_order, spec_for
from dfq.quant.quantizer import BIT_RANGE, BITS
from dfq.ranges import check_ranges, out_of_range, ranged

METHODS = ("none", "saved", *SENSITIVITIES)  # none: one width for all; saved: widths from a YAML file


@dataclass
class MixedPrecisionConfig:
    """dfq's `mixed_precision` group: the sensitivity measure (or `saved` widths from `path`), the
    candidate widths, the budget (`budget_kind` <= `budget`) and what the measurement may cost.
    `activation_candidates`: also choose each searched layer's input width among these (its
    sensitivity is ZeroQ's measure on the input; only bit-operations depend on it, so `bops` only)."""

    method: str = "none"
    candidates: list[int] = field(default_factory=lambda: [2, 3, 4, 6, 8])
    budget_kind: str = "avg_weight_bits"
    budget: float | None = ranged(None, 0.0)
    num_samples: int | None = ranged(256, 1)  # the first N samples (None: all)
    batch_size: int = ranged(128, 1)
    probes: int = ranged(16, 1)  # Hutchinson probes per batch (hawq)
    path: str | None = None  # saved: the per-layer YAML an earlier run wrote
    frontier_points: int = ranged(24, 2)  # budgets between the cheapest and dearest choice (Pareto plot)
    activation_candidates: list[int] | None = None  # input widths searched too (bops budgets)

    def __post_init__(self) -> None:
        check_ranges(self, "mixed_precision")
        if self.method not in METHODS:
            raise ValueError(f"mixed_precision.method={self.method!r} is invalid; valid: {list(METHODS)}")
        if self.budget_kind not in BUDGETS:
            raise ValueError(
                f"mixed_precision.budget_kind={self.budget_kind!r} is invalid; valid: {sorted(BUDGETS)}"
            )
        for key in ("candidates", "activation_candidates"):
            for bits in getattr(self, key) or ():
                if bits not in BIT_RANGE or bits > BITS["high"]:
                    raise ValueError(out_of_range(f"mixed_precision.{key}", bits, BIT_RANGE))
        if self.activation_candidates and self.budget_kind != "bops":
            raise ValueError(
                "mixed_precision.activation_candidates needs mixed_precision.budget_kind=bops "
                f"(a {self.budget_kind} budget does not depend on input widths)"
            )
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
        described |= (
            {"activation_candidates": self.activation_candidates} if self.activation_candidates else {}
        )
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

    def cost(
        self, name: str, w_bits: int, policy: QuantPolicy, kind: str, a_bits: int | None = None
    ) -> float:
        """One layer's share of budget `kind` at `w_bits` and input `a_bits` (None: its planned bits)."""
        planned = self.bits[name]
        if planned is None:
            return BUDGETS[kind].layer(self.shapes[name], None, None, self.accounting)
        weight = spec_for(policy.weight, w_bits)
        inputs = spec_for(policy.activation, planned.a_bits if a_bits is None else a_bits)
        return BUDGETS[kind].layer(self.shapes[name], weight, inputs, self.accounting)

    def total(
        self,
        policy: QuantPolicy,
        kind: str,
        widths: dict[str, int] | None = None,
        input_widths: dict[str, int] | None = None,
    ) -> float:
        """Budget `kind` of the whole network with `widths` (and `input_widths`) in place of the planned
        weight (and input) bits."""
        widths, input_widths = widths or {}, input_widths or {}
        shares = (self.cost(name, widths.get(name, bits.w_bits if bits else 32), policy, kind,
                            input_widths.get(name)) for name, bits in self.bits.items())  # fmt: skip
        return BUDGETS[kind].rest(self.accounting) + sum(shares)


def with_widths(
    policy: QuantPolicy, widths: dict[str, int], input_widths: dict[str, int] | None = None
) -> QuantPolicy:
    """The policy with each named layer's weight (and input) bits overridden, after the protocol's
    own rules."""
    overrides = dict(policy.overrides)
    for key, chosen in (("w_bits", widths), ("a_bits", input_widths or {})):
        for name, bits in chosen.items():
            overrides[name] = {**overrides.get(name, {}), key: bits}
    return dataclasses.replace(policy, overrides=overrides)


def split_choice(choice: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """A solver's choice as weight widths and input widths (the latter empty where only weights were
    searched: the choice's options are bits, not (weight bits, input bits) pairs)."""
    widths = {name: option[0] if isinstance(option, tuple) else option for name, option in choice.items()}
    inputs = {name: option[1] for name, option in choice.items() if isinstance(option, tuple)}
    return widths, inputs


def frontier(sensitivity: Table, costs: Table, fixed: float, points: int) -> list[dict[str, Any]]:
    """Least summed sensitivity at `points` budgets from the cheapest to the dearest choice: the
    Pareto frontier of size against sensitivity (each point's widths included)."""
    low, high = cheapest(costs), sum(max(options.values()) for options in costs.values())
    result = []
    for limit in np.linspace(low, high, points):
        choice = solve(sensitivity, costs, float(limit))
        widths, inputs = split_choice(choice)
        result.append({"size": fixed + total(costs, choice), "sensitivity": total(sensitivity, choice),
                       "widths": widths} | ({"input_widths": inputs} if inputs else {}))  # fmt: skip
    return result


def option_tables(
    plan: Plan, policy: QuantPolicy, kind: str, sensitivity: Table, inputs: Table | None
) -> tuple[Table, Table]:
    """The solver's sensitivity and cost per layer and option: each weight width, or with `inputs`
    each (weight bits, input bits) pair, its sensitivity the sum of the two (ZeroQ and HAWQ take
    sensitivities as additive)."""
    if inputs is None:
        costs = {
            name: {b: plan.cost(name, b, policy, kind) for b in row} for name, row in sensitivity.items()
        }
        return sensitivity, costs
    pairs = {
        name: {(w, a): value + inputs[name][a] for w, value in row.items() for a in inputs[name]}
        for name, row in sensitivity.items()
    }
    costs = {
        name: {(w, a): plan.cost(name, w, policy, kind, a) for w, a in row} for name, row in pairs.items()
    }
    return pairs, costs


def as_text(sensitivity: Table) -> dict[str, dict[str, float]]:
    """A sensitivity table with its options as text, for JSON."""
    return {name: {str(b): v for b, v in row.items()} for name, row in sensitivity.items()}


def choose_bits(
    model: nn.Module, samples: torch.Tensor, policy: QuantPolicy, options: MixedPrecisionConfig
) -> tuple[QuantPolicy, dict[str, Any] | None]:
    """The policy with per-layer weight (and optionally input) widths chosen on `samples` (the float
    network `model`, which the student will be quantized from), and a report: the options, each
    layer's sensitivity, the widths, the budget reached and the frontier. `method=none` returns the
    policy untouched."""
    if not options.active:
        return policy, None
    plan = Plan.of(model, policy, samples)
    if options.method == "saved":
        widths, inputs = load_widths(options.path, list(plan.bits))
        report = {"options": options.describe(), "widths": widths}
    else:
        widths, inputs, report = search_widths(model, samples, policy, options, plan)
    if inputs:
        report["input_widths"] = inputs
    return with_widths(policy, widths, inputs), report | measured(plan, policy, widths, inputs)


def sensitivities(
    model: nn.Module,
    samples: torch.Tensor,
    layers: list[str],
    policy: QuantPolicy,
    options: MixedPrecisionConfig,
) -> tuple[Table, Table | None]:
    """Each searched layer's sensitivity to its weight width (the configured measure) and, where input
    widths are searched too, to its input width (ZeroQ's measure on the input)."""
    if options.activation_candidates and policy.placement != "layer_input":
        raise ValueError(
            "mixed_precision.activation_candidates chooses each layer's input width: it needs "
            f"quant.placement=layer_input, not {policy.placement}"
        )
    chosen = samples[: options.num_samples] if options.num_samples else samples
    measure = SensitivityOptions(options.batch_size, options.probes)
    weights = SENSITIVITIES[options.method](model, chosen, layers, options.candidates, policy.weight, measure)
    if not options.activation_candidates:
        return weights, None
    candidates = options.activation_candidates
    return weights, zeroq_input_sensitivity(model, chosen, layers, candidates, policy.activation, measure)


def search_widths(
    model: nn.Module, samples: torch.Tensor, policy: QuantPolicy, options: MixedPrecisionConfig, plan: Plan
) -> tuple[dict[str, int], dict[str, int], dict[str, Any]]:
    """Weight and input widths of least summed sensitivity under the budget (exact), and the report."""
    layers = plan.searchable(policy)
    weights, inputs = sensitivities(model, samples, layers, policy, options)
    kind = options.budget_kind
    table, costs = option_tables(plan, policy, kind, weights, inputs)
    fixed = plan.total(policy, kind) - sum(plan.cost(name, policy.w_bits, policy, kind) for name in layers)
    try:
        choice = solve(table, costs, options.budget - fixed)
    except ValueError as error:
        unit = BUDGETS[kind].unit
        raise ValueError(f"mixed_precision.budget={options.budget} ({unit}): {error}") from error
    widths, input_widths = split_choice(choice)
    report = {
        "options": options.describe(),
        "widths": widths,
        "sensitivity": as_text(weights),
        "summed_sensitivity": total(table, choice),
        "frontier": frontier(table, costs, fixed, options.frontier_points),
    }
    return widths, input_widths, report | ({"input_sensitivity": as_text(inputs)} if inputs else {})


def measured(
    plan: Plan, policy: QuantPolicy, widths: dict[str, int], input_widths: dict[str, int] | None = None
) -> dict[str, float]:
    """The plan's total under every budget kind (what the student's `model_size` will show)."""
    return {f"planned_{kind}": plan.total(policy, kind, widths, input_widths) for kind in BUDGETS}


WIDTHS_HEADER = (
    "# dfq mixed precision: weight (and input) bits per layer; reuse with\n"
    "# mixed_precision=saved mixed_precision.path=<this file>\n"
)
WIDTH_KEYS = ("w_bits", "a_bits")  # the layer policy's override keys, as the YAML holds them


def save_widths(widths: dict[str, int], path: str | Path, input_widths: dict[str, int] | None = None) -> None:
    """The chosen widths as YAML, layer name -> {w_bits: b[, a_bits: a]} (the layer policy's override
    form)."""
    entries = {name: {"w_bits": int(bits)} for name, bits in widths.items()}
    for name, bits in (input_widths or {}).items():
        entries[name]["a_bits"] = int(bits)
    with atomic_path(path) as tmp:
        tmp.write_text(WIDTHS_HEADER + yaml.safe_dump(entries, sort_keys=False))


def load_widths(path: str | Path, layers: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Weight and input widths saved by `save_widths`, checked against the model's layer names and
    dfq's bit range (input widths: those the file sets)."""
    try:
        content = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as error:
        raise ValueError(f"mixed_precision.path={path}: not readable ({error.strerror})") from error
    chosen: dict[str, dict[str, int]] = {key: {} for key in WIDTH_KEYS}
    for name, entry in content.items():
        if name not in layers:
            raise ValueError(f"{path}: {name!r} is not a conv/linear layer of this model; valid: {layers}")
        entry = entry if isinstance(entry, dict) else {}
        for key in ("w_bits", *(key for key in WIDTH_KEYS[1:] if key in entry)):  # w_bits required
            bits = entry.get(key)
            if bits not in BIT_RANGE:
                raise ValueError(out_of_range(f"{path}: {name}.{key}", bits, BIT_RANGE))
            chosen[key][name] = int(bits)
    return chosen["w_bits"], chosen["a_bits"]


# The choice's keys a run's metrics.json keeps; sensitivities and frontier stay in mixed_precision.json.
CHOICE_RECORD = (
    "options",
    "widths",
    "input_widths",
    "summed_sensitivity",
    *(f"planned_{kind}" for kind in BUDGETS),
)


def save_choice(choice: dict[str, Any], out_dir: Path, size: dict[str, float], top1: float) -> None:
    """The widths as reusable YAML (`mixed_precision.yaml`), the whole report as JSON, and the Pareto
    plot of the frontier with this student's measured top-1."""
    save_widths(choice["widths"], out_dir / "mixed_precision.yaml", choice.get("input_widths"))
    save_json(choice | {"size": size, "top1": top1}, out_dir / "mixed_precision.json")
    if choice.get("frontier"):
        kind = choice["options"]["budget_kind"]
        point = MeasuredPoint(size[kind], top1, f"{kind} <= {choice['options']['budget']}")
        plot_frontier(choice["frontier"], [point], BUDGETS[kind].unit, out_dir / "mixed_precision.png")
