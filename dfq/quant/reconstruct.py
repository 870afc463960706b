"""Block-reconstruction PTQ on unlabelled samples: AdaRound, BRECQ, QDrop and GENIE-M as options of
one loop.

Unit by unit (`dfq.quant.blocks`), the quantized student's unit learns its weights' rounding
(AdaRound, Nagel et al., ICML 2020) and, optionally, its activation step sizes (LSQ) and weight
step sizes (GENIE-M, Jeon et al., CVPR 2023), so that its output on the samples matches the float
unit's: inputs from the already-reconstructed student before it, targets from the float network
(BRECQ, Li et al., ICLR 2021; optionally weighted by squared output gradients, BRECQ's Fisher
approximation). QDrop (Wei et al., ICLR 2022) feeds each input element from the float network with
probability p and lets each activation element pass unquantized with the same p; p = 0 is BRECQ.
Optionally the samples are widened by crop-and-flip copies, more distinct inputs for the same budget.
Every finished unit is saved, so an interrupted run resumes at unit granularity to the same student.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfq.data.augment import augment
from dfq.faults import InterruptedRun
from dfq.io import save_torch
from dfq.progress import Progress
from dfq.quant.blocks import LAYER_TYPES, Unit, find_units
from dfq.quant.observers import make_observer
from dfq.quant.policy import graph_order
from dfq.quant.quantizer import Quantizer
from dfq.quant.rounding import AdaRound, annealed_beta
from dfq.ranges import SEED_MAX, check_ranges, ranged
from dfq.speed import SpeedConfig, to_memory_format

log = logging.getLogger(__name__)

UNIT_KINDS = ("block", "layer")
STATE_FILE = "state.pt"


@dataclass
class ReconstructConfig:
    """One reconstruction recipe (`conf/reconstruct/`): `method` names it (`none` switches the step
    off); the rest are the loop's options, defaults as in BRECQ's code."""

    method: str = "none"
    unit: str = "block"  # "block": residual blocks as units (BRECQ); "layer": every layer alone (AdaRound)
    num_samples: int | None = ranged(None, 1)  # the first N samples (None: all)
    iterations: int = ranged(2000, 0)  # per unit
    batch_size: int = ranged(32, 1)
    rounding_lr: float = ranged(1e-3, 0, open_low=True)  # Adam on AdaRound's variables
    activation_lr: float = ranged(4e-5, 0)  # Adam (cosine) on activation step sizes, LSQ; 0: fixed
    weight_scale_lr: float = ranged(0.0, 0)  # Adam (cosine) on weight step sizes, GENIE-M; 0: fixed
    round_weight: float = ranged(0.01, 0)  # lambda of the rounding regularizer
    warmup: float = ranged(0.2, 0, 1, open_high=True)  # fraction of iterations without the regularizer
    beta_start: float = ranged(20.0, 0, open_low=True)  # the regularizer's exponent, annealed ...
    beta_end: float = ranged(2.0, 0, open_low=True)  # ... to this after the warm-up
    drop_probability: float = ranged(0.0, 0, 1, open_high=True)  # QDrop's p (0: BRECQ)
    fisher: bool = False  # weight the output error by squared gradients of the distillation loss
    weight_grid: str = "mse"  # the per-channel weight grid before rounding is learned: mse or minmax
    copies: int = ranged(0, 0)  # crop-and-flip copies of every sample added to the set (images only)
    copy_padding: int = ranged(4, 0)  # the copies' crop padding (CIFAR's training crops: 4)
    seed: int = ranged(0, 0, SEED_MAX)
    resume: bool = True  # continue after the last unit an interrupted run saved

    @property
    def active(self) -> bool:
        """Whether the reconstruction step runs (`method` other than `none`)."""
        return self.method != "none"

    def __post_init__(self) -> None:
        check_ranges(self, "reconstruct")
        if self.unit not in UNIT_KINDS:
            raise ValueError(f"reconstruct.unit={self.unit!r} is invalid; valid: {list(UNIT_KINDS)}")
        if self.weight_grid not in ("mse", "minmax"):
            raise ValueError(
                f"reconstruct.weight_grid={self.weight_grid!r} is invalid; valid: ['minmax', 'mse']"
            )


class StopForward(Exception):
    """Raised by a capture hook once the wanted tensor is seen: the rest of the forward is skipped."""


@torch.no_grad()
def capture(
    model: nn.Module, name: str, x: torch.Tensor, output: bool, batch_size: int = 128
) -> torch.Tensor:
    """The input (or output) of module `name` when `model` runs on `x`, batch by batch."""
    module = model.get_submodule(name)
    seen: list[torch.Tensor] = []

    def keep(_module: nn.Module, args: tuple, result: Any = None) -> None:
        seen.append((result if output else args[0]).detach().clone())
        raise StopForward

    handle = module.register_forward_hook(keep) if output else module.register_forward_pre_hook(keep)
    try:
        for start in range(0, len(x), batch_size):
            with suppress(StopForward):
                model(x[start : start + batch_size])
    finally:
        handle.remove()
    return torch.cat(seen)


def output_gradients(
    student: nn.Module, reference: nn.Module, name: str, x: torch.Tensor, batch_size: int = 128
) -> torch.Tensor:
    """Squared gradients of KL(reference || student) at the output of unit `name` (BRECQ's diagonal
    Fisher approximation of the unit's output), batch by batch."""
    module = student.get_submodule(name)
    grads: list[torch.Tensor] = []
    kept: list[torch.Tensor] = []

    def retain(_module: nn.Module, _args: tuple, result: torch.Tensor) -> None:
        result.retain_grad()
        kept.append(result)

    handle = module.register_forward_hook(retain)
    try:
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            with torch.no_grad():
                target = F.log_softmax(reference(batch), 1)
            loss = F.kl_div(F.log_softmax(student(batch), 1), target, log_target=True, reduction="sum")
            loss.backward()
            grads.append(kept.pop().grad.detach().pow(2))
    finally:
        handle.remove()
        student.zero_grad(set_to_none=True)
    return torch.cat(grads)


def unit_quantizers(unit: nn.Module) -> tuple[list[tuple[nn.Module, Quantizer]], list[Quantizer]]:
    """(layer, weight quantizer) pairs and the activation quantizers inside a unit (enabled only)."""
    weights, activations = [], []
    for name, module in unit.named_modules():
        if not isinstance(module, Quantizer) or not module.spec.enabled:
            continue
        owner, _, leaf = name.rpartition(".")
        if leaf == "weight_quantizer":
            weights.append((unit.get_submodule(owner) if owner else unit, module))
        else:
            activations.append(module)
    return weights, activations


@torch.no_grad()
def fix_weight_grid(layer: nn.Module, quantizer: Quantizer, observer: str) -> None:
    """Give the weight a fixed grid (per channel where the spec says so) from an MSE or min-max
    search over its values, instead of re-deriving it at every forward pass."""
    search = make_observer(observer, quantizer.channel_axis, quantizer.spec.grid)
    search.update(layer.weight)
    scale, zero_point, quantizer.qmin, quantizer.qmax = quantizer.spec.grid.affine(*search.range())
    quantizer.scale, quantizer.zero_point = scale, zero_point
    quantizer.spec = dataclasses.replace(quantizer.spec, dynamic=False)


def learn(quantizer: Quantizer) -> nn.Parameter:
    """Make the quantizer's step size a trained parameter (LSQ's estimator in `Quantizer.forward`),
    its gradient unscaled, as in BRECQ's and GENIE's code (their learning rates assume it)."""
    quantizer.scale = nn.Parameter(quantizer.scale.detach().clone())
    quantizer.step_gradient_scale = False
    return quantizer.scale


def fix(quantizer: Quantizer) -> None:
    """Turn a trained step size back into a fixed buffer (kept positive)."""
    if isinstance(quantizer.scale, nn.Parameter):
        value = quantizer.scale.detach().clamp_min(torch.finfo(torch.float32).eps).clone()
        del quantizer._parameters["scale"]
        quantizer.register_buffer("scale", value)
    quantizer.step_gradient_scale = True


@torch.no_grad()
def harden(layer: nn.Module, quantizer: Quantizer) -> None:
    """Round every weight up or down for good and write the rounded weights into the layer, so the
    student is a plain fake-quantized network again (its weights exactly on their grid)."""
    quantizer.rounding.harden()
    fix(quantizer)
    layer.weight.copy_(quantizer(layer.weight))
    quantizer.rounding = None


@dataclass
class UnitState:
    """What is trained in one unit, and how to undo the training mode afterwards."""

    weights: list[tuple[nn.Module, Quantizer]]
    activations: list[Quantizer]

    def roundings(self) -> list[AdaRound]:
        return [quantizer.rounding for _, quantizer in self.weights]

    def parameter_groups(self, options: ReconstructConfig) -> tuple[list[dict], list[dict]]:
        """Adam groups: rounding variables; step sizes (activation, and weight for GENIE-M)."""
        rounding = [{"params": [r.variable for r in self.roundings()], "lr": options.rounding_lr}]
        scales = []
        if options.activation_lr > 0 and self.activations:
            scales.append({"params": [learn(q) for q in self.activations], "lr": options.activation_lr})
        if options.weight_scale_lr > 0 and self.weights:
            scales.append({"params": [learn(q) for _, q in self.weights], "lr": options.weight_scale_lr})
        return rounding, scales


def prepare_unit(unit: nn.Module, options: ReconstructConfig) -> UnitState:
    """Fixed weight grids with AdaRound variables on them; QDrop's drop probability on activations."""
    weights, activations = unit_quantizers(unit)
    for layer, quantizer in weights:
        fix_weight_grid(layer, quantizer, options.weight_grid)
        position = layer.weight / quantizer.broadcast(quantizer.scale, layer.weight)
        fraction = quantizer.zero_point - torch.round(quantizer.zero_point)
        quantizer.rounding = AdaRound(position + quantizer.broadcast(fraction, layer.weight))
    for quantizer in activations:
        quantizer.drop_probability = options.drop_probability
    return UnitState(weights, activations)


def finish_unit(state: UnitState) -> None:
    """Harden the rounding, fix the learned step sizes, switch QDrop off."""
    for layer, quantizer in state.weights:
        harden(layer, quantizer)
    for quantizer in state.activations:
        fix(quantizer)
        quantizer.drop_probability = 0.0


def reconstruction_error(
    output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    """Squared error summed over channels, averaged over the rest (optionally Fisher-weighted)."""
    error = (output - target).pow(2)
    if weight is not None:
        error = error * weight
    return error.sum(1).mean() if error.dim() > 1 else error.mean()


@dataclass
class UnitData:
    """A unit's training tensors: quantized-student inputs, float inputs (QDrop), float targets and
    Fisher weights (optional)."""

    inputs: torch.Tensor
    float_inputs: torch.Tensor | None
    targets: torch.Tensor
    fisher: torch.Tensor | None


def unit_data(
    student: nn.Module, reference: nn.Module, name: str, x: torch.Tensor, options: ReconstructConfig
) -> UnitData:
    """Capture what unit `name` is trained on from the student so far and the float reference."""
    float_inputs = capture(reference, name, x, output=False) if options.drop_probability > 0 else None
    fisher = output_gradients(student, reference, name, x) if options.fisher else None
    return UnitData(capture(student, name, x, False), float_inputs, capture(reference, name, x, True), fisher)


def train_unit(
    unit: nn.Module, state: UnitState, data: UnitData, options: ReconstructConfig, label: str
) -> dict[str, float]:
    """The reconstruction loop of one unit: output error plus the annealed rounding regularizer."""
    rounding_groups, scale_groups = state.parameter_groups(options)
    rounding_opt = torch.optim.Adam(rounding_groups)
    scale_opt = torch.optim.Adam(scale_groups) if scale_groups else None
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(scale_opt, T_max=max(options.iterations, 1))
        if scale_opt
        else None
    )
    count = len(data.inputs)
    last = regularizer = torch.zeros(())
    with Progress(options.iterations, f"reconstruction {label}") as progress:
        for iteration in range(options.iterations):
            pick = torch.randint(count, (min(options.batch_size, count),))
            inputs = data.inputs[pick]
            if data.float_inputs is not None:  # QDrop: float input elements with probability p
                keep_float = torch.rand_like(inputs) < options.drop_probability
                inputs = torch.where(keep_float, data.float_inputs[pick], inputs)
            fisher = None if data.fisher is None else data.fisher[pick]
            error = reconstruction_error(unit(inputs), data.targets[pick], fisher)
            beta = annealed_beta(
                iteration, options.iterations, options.warmup, options.beta_start, options.beta_end
            )
            regularizer = torch.zeros(())
            if iteration >= options.warmup * options.iterations:
                regularizer = sum((r.regularizer(beta) for r in state.roundings()), torch.zeros(()))
            loss = error + options.round_weight * regularizer
            rounding_opt.zero_grad(set_to_none=True)
            if scale_opt:
                scale_opt.zero_grad(set_to_none=True)
            loss.backward()
            rounding_opt.step()
            if scale_opt:
                scale_opt.step()
                schedule.step()
            last = error.detach()
            regularizer = regularizer.detach()
            progress.update(loss=float(last), rounding=float(regularizer))
            check_stop(label)
    return {"batch_error_end": float(last), "rounding_end": float(regularizer)}


@torch.no_grad()
def unit_error(unit: nn.Module, data: UnitData, count: int = 256) -> float:
    """The unit's output error on its first `count` samples, from the student's own inputs (no drop)."""
    return float(reconstruction_error(unit(data.inputs[:count]), data.targets[:count], None))


STOP = {"requested": False}


@contextmanager
def stop_on_signal() -> Iterator[None]:
    """While reconstructing, SIGTERM/SIGINT ask the loop to stop at the next iteration (the units
    finished so far are on disk)."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def request(_signum: int, _frame: Any) -> None:
        STOP["requested"] = True

    STOP["requested"] = False
    try:
        for sig in previous:
            signal.signal(sig, request)
        yield
    except ValueError:  # not the main thread: signals stay as they are
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_stop(label: str) -> None:
    if STOP["requested"]:
        raise InterruptedRun(f"reconstruction of {label} was interrupted; rerun the same command to resume")


def resume_state(path: Path | None, units: list[Unit], options: ReconstructConfig) -> dict | None:
    """The state an earlier run of the same recipe on the same units saved, if any."""
    if path is None or not options.resume or not path.is_file():
        return None
    saved = torch.load(path, weights_only=False)
    same = saved["units"] == [u.name for u in units] and saved["options"] == dataclasses.asdict(options)
    return saved if same else None


def restore(student: nn.Module, units: list[Unit], saved: dict) -> int:
    """Load the saved student and give its finished units fixed weight grids; returns their count."""
    for unit in units[: saved["done"]]:
        for _, quantizer in unit_quantizers(student.get_submodule(unit.name))[0]:
            quantizer.spec = dataclasses.replace(quantizer.spec, dynamic=False)
    student.load_state_dict(saved["student"])
    return saved["done"]


def reconstruct(
    student: nn.Module,
    reference: nn.Module,
    x: torch.Tensor,
    options: ReconstructConfig,
    state_dir: str | Path | None = None,
    speed: SpeedConfig | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Reconstruct the calibrated `student` unit by unit against the float `reference` (the network
    it was quantized from) on samples `x`; returns it with one loss record per unit. With
    `state_dir`, every finished unit is saved there and a rerun resumes after the last one. `speed`:
    its memory format (channels_last) for both networks and the samples; compiling does not apply."""
    x = to_memory_format(with_copies(x, options), speed)
    if speed is not None:
        student.to(memory_format=speed.memory_format)
        reference.to(memory_format=speed.memory_format)
    units = split_units(student, x, options.unit)
    path = Path(state_dir) / STATE_FILE if state_dir else None
    saved = resume_state(path, units, options)
    done = restore(student, units, saved) if saved else 0
    losses = saved["losses"] if saved else []
    student.eval()
    reference.eval()
    with stop_on_signal():
        for index, unit in enumerate(units[done:], start=done):
            label = f"{index + 1}/{len(units)} {unit.name}"
            losses.append(
                {"unit": unit.name, **reconstruct_unit(student, reference, unit, x, options, index, label)}
            )
            log.info("reconstructed %s: %s", label, losses[-1])
            if path:
                state = {"done": index + 1, "units": [u.name for u in units], "losses": losses}
                save_torch(
                    state | {"options": dataclasses.asdict(options), "student": student.state_dict()}, path
                )
    return student, losses


def with_copies(x: torch.Tensor, options: ReconstructConfig) -> torch.Tensor:
    """The samples followed by `options.copies` randomly cropped and flipped copies of each, drawn
    from the recipe's seed (so a resumed run sees the same set)."""
    if options.copies == 0:
        return x
    if x.dim() != 4:
        raise ValueError(
            f"reconstruct.copies={options.copies} needs image samples (N, C, H, W), got {tuple(x.shape)}"
        )
    generator = torch.Generator().manual_seed(options.seed)
    repeated = x.repeat(options.copies, 1, 1, 1)
    return torch.cat([x, augment(repeated, options.copy_padding, True, generator)])


def split_units(student: nn.Module, x: torch.Tensor, kind: str) -> list[Unit]:
    """The units to reconstruct: blocks and the layers outside them, or (kind `layer`, AdaRound's
    layer-wise setting) every layer on its own."""
    if kind == "block":
        return find_units(student, x[:2])
    return [Unit(name, "layer") for name in graph_order(student, x[:2], LAYER_TYPES)]


def reconstruct_unit(
    student: nn.Module,
    reference: nn.Module,
    unit: Unit,
    x: torch.Tensor,
    options: ReconstructConfig,
    index: int,
    label: str,
) -> dict[str, float]:
    """Capture the unit's data, train its rounding (and step sizes), harden it. Returns the unit's
    output error as calibrated and as reconstructed (the same samples, nearest vs learned rounding),
    the last batch's error and regularizer, and its wall time."""
    start = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(options.seed * 1_000_003 + index)  # the same draws whether resumed or not
        data = unit_data(student, reference, unit.name, x, options)
        module = student.get_submodule(unit.name)
        calibrated = unit_error(module, data)
        state = prepare_unit(module, options)
        if not state.weights:  # nothing to round (floating-point weights): leave the unit as it is
            for quantizer in state.activations:
                quantizer.drop_probability = 0.0
            return {"error_calibrated": calibrated, "error_reconstructed": calibrated, "seconds": 0.0}
        result = train_unit(module, state, data, options, label)
        finish_unit(state)
        result = {"error_calibrated": calibrated, "error_reconstructed": unit_error(module, data), **result}
    return result | {"seconds": round(time.perf_counter() - start, 2)}
