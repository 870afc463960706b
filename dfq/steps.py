"""The student's recipe as ordered steps (`student.steps`: calibrate, reconstruct, distill), each a
plain function found by name in one registry, `STEPS`, and each leaving a record of what it was (name
and options), the student's top-1 after it and its wall time: what the results collector builds its
columns from (DESIGN.md, "One run, as data flowing").
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from dfq.data.sample_set import SampleSet
from dfq.distill.distill import distill
from dfq.distill.module import FinetuneConfig
from dfq.evaluate import top1
from dfq.quant.calibrate import CalibrateConfig, calibrate
from dfq.quant.reconstruct import ReconstructConfig, reconstruct
from dfq.speed import SpeedConfig


@dataclass
class StepContext:
    """What every step may use besides the student and its own options: the float teacher, the
    samples (no labels needed), Lightning options, a folder for its checkpoints, the speed switches,
    and the float network the student was quantized from (the teacher, or its BN-folded copy)."""

    teacher: nn.Module
    samples: SampleSet
    trainer_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    out_dir: Path | None = None
    speed: SpeedConfig | None = None
    reference: nn.Module | None = None

    @property
    def float_student(self) -> nn.Module:
        """The float network with the student's structure (reconstruction targets come from it)."""
        return self.reference if self.reference is not None else self.teacher


def calibrate_step(student: nn.Module, options: CalibrateConfig, context: StepContext) -> nn.Module:
    """Post-training calibration on the first `options.num_samples` samples (dfq.quant.calibrate)."""
    x = context.samples.first(options.num_samples, "calibrate.num_samples").x
    return calibrate(student, x, options.batch_size, options.bn_reestimate, options.bias_correction)


def distill_step(student: nn.Module, options: FinetuneConfig, context: StepContext) -> nn.Module:
    """Quantization-aware distillation towards the teacher (dfq.distill.distill), resumable through
    `out_dir/checkpoints`."""
    tuning = context.samples.first(options.num_samples, "finetune.num_samples")
    labels = tuning.y if options.label_weight else None
    checkpoints = context.out_dir / "checkpoints" if context.out_dir else None
    return distill(
        student,
        context.teacher,
        tuning.x,
        options,
        labels,
        context.trainer_options,
        checkpoints,
        context.speed,
    )


def reconstruct_step(student: nn.Module, options: ReconstructConfig, context: StepContext) -> nn.Module:
    """Block reconstruction (dfq.quant.reconstruct) on the first `options.num_samples` samples, in the
    speed switches' memory format, resumable through `out_dir/reconstruct`; each unit's losses go to
    the run's logger."""
    x = context.samples.first(options.num_samples, "reconstruct.num_samples").x
    state_dir = context.out_dir / "reconstruct" if context.out_dir else None
    student, losses = reconstruct(student, context.float_student, x, options, state_dir, context.speed)
    logger = context.trainer_options.get("logger")
    if logger and hasattr(logger, "log_metrics"):
        for index, unit in enumerate(losses):
            values = {f"reconstruct/{unit['unit']}/{k}": v for k, v in unit.items() if k != "unit"}
            logger.log_metrics(values, step=index)
    return student


@dataclass(frozen=True)
class Step:
    """A registry entry: the function, the config field holding its options, the short label of its
    table columns (PTQ, QAT), the metric key of the top-1 after it, and the options that do not
    change the student it returns (left out of its record)."""

    run: Callable[[nn.Module, Any, StepContext], nn.Module]
    options_key: str
    label: str
    metric: str
    bookkeeping: tuple[str, ...] = ()

    def describe(self, options: Any) -> dict[str, Any]:
        """The options of a record: every field of the step's config but bookkeeping."""
        fields = dataclasses.asdict(options)
        return {name: value for name, value in fields.items() if name not in self.bookkeeping}


STEPS: dict[str, Step] = {
    "calibrate": Step(calibrate_step, "calibrate", "PTQ", "ptq_top1"),
    "reconstruct": Step(reconstruct_step, "reconstruct", "REC", "reconstruct_top1", ("resume", "seed")),
    "distill": Step(distill_step, "finetune", "QAT", "qat_top1", ("enabled", "resume", "seed")),
}
FIRST_STEP = "calibrate"  # every other step needs the quantizers' ranges


def check_steps(steps: Sequence[str]) -> None:
    """Raise ValueError unless `steps` are registry names, each once, starting with calibration."""
    unknown = [name for name in steps if name not in STEPS]
    if unknown:
        raise ValueError(f"student.steps holds {unknown[0]!r}, which is not a step; valid: {sorted(STEPS)}")
    if not steps or steps[0] != FIRST_STEP or len(set(steps)) != len(steps):
        raise ValueError(
            f"student.steps={list(steps)} must start with {FIRST_STEP!r} and name each step once"
        )


def is_active(options: Any) -> bool:
    """Whether a step with these options runs at all (distillation with 0 epochs or disabled does not)."""
    return bool(getattr(options, "active", True))


def run_steps(
    student: nn.Module,
    steps: Sequence[str],
    options: Callable[[str], Any],
    context: StepContext,
    test: Dataset,
    batch_size: int = 256,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Apply each active step in order (`options(key)` gives a step's config); after each, the student's
    top-1 on `test`. Returns the student and one record per step that ran."""
    records = []
    for name in steps:
        step = STEPS[name]
        step_options = options(step.options_key)
        if not is_active(step_options):
            continue
        start = time.time()
        student = step.run(student, step_options, context)
        seconds = time.time() - start
        records.append(
            {
                "name": name,
                "options": step.describe(step_options),
                "top1": top1(student, test, batch_size),
                "wall_time_s": round(seconds, 1),
            }
        )
    return student, records
