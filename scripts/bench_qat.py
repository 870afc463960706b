"""Benchmark: what fake quantization adds to a distillation step.

For each case (model @ resolution x batch) and speed variant, in a fresh process: Lightning fits of the
distillation module (KL to the float teacher, SGD, crop + flip) with the W4A4 `strict` student (every
Conv2d/Linear input and weight fake-quantized, weights per-channel and re-derived each step) and with
the same network unquantized, timed per step. Reports both medians, their ratio and the quantized
run's peak memory.

    python scripts/bench_qat.py --cases resnet20@32x64 --out docs/perf/qat
"""

from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dfq.benchmark import MODELS, VARIANTS, StepTimer, build, command_line, machine, peak_memory
from dfq.distill.module import DistillationModule, FinetuneConfig
from dfq.quant.calibrate import calibrate
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize
from dfq.speed import SpeedConfig

COLUMNS = {
    "model": "model",
    "resolution": "input",
    "batch": "batch",
    "variant": "variant",
    "float_ms": "float step ms",
    "quantized_ms": "W4A4 step ms",
    "ratio": "W4A4 / float",
    "peak_mib": "peak MiB (W4A4)",
}


def step_time(student: nn.Module, teacher: nn.Module, x: torch.Tensor, case: dict[str, Any]) -> float:
    """Median seconds of one distillation step of `student` in a Lightning fit."""
    switches, precision = VARIANTS[case["variant"]]
    config = FinetuneConfig(epochs=1, batch_size=case["batch"], crop_padding=4, flip=True)
    steps = len(x) // case["batch"]
    module = DistillationModule(student, teacher, config, steps, SpeedConfig(**switches))
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator=case["device"], devices=1, precision=precision, max_epochs=1, logger=False,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module, DataLoader(TensorDataset(x), batch_size=case["batch"], shuffle=True, drop_last=True))
    return timer.median(case["warmup"])


def measure(case: dict[str, Any]) -> dict[str, Any]:
    """The quantized student's step (first, for its peak memory), then the float student's."""
    torch.manual_seed(0)
    device = torch.device(case["device"])
    teacher, normalization = build(case["model"], case["resolution"])
    teacher.requires_grad_(False)
    count = case["batch"] * (case["warmup"] + case["steps"] + 1)
    x = torch.randn(count, *normalization.shape)
    student = calibrate(quantize(teacher, QuantPolicy(w_bits=4, a_bits=4), x[:2]), x[: case["batch"]])
    with peak_memory(device) as memory:
        quantized = step_time(student.requires_grad_(True), teacher, x, case)
    float_student = copy.deepcopy(teacher).requires_grad_(True)
    floating = step_time(float_student, teacher, x, case)
    return {
        **case,
        "float_ms": floating * 1e3,
        "quantized_ms": quantized * 1e3,
        "ratio": quantized / floating,
        "peak_mib": memory["peak_mib"],
        "machine": machine(device),
    }


def main() -> None:
    command_line(__file__, __doc__, measure, COLUMNS, MODELS, VARIANTS, "resnet20@32x64")


if __name__ == "__main__":
    main()
