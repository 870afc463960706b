"""Benchmark: how close a synthesis step gets to its floor, the teacher's forward + backward to the input.

For each case (model @ resolution x batch) and speed variant, in a fresh process: a real Lightning fit of
the BN-statistics synthesis module (BNS loss over every BN layer, Adam, cosine schedule, clamping),
timed per step, then bare forward + backward passes of the same prepared teacher at the same batch and
precision. Reports both medians, their ratio, images x iterations per second and peak memory. Random
weights: speed does not depend on them.

    python scripts/bench_synthesis.py --cases resnet20@32x128 resnet18@224x16 --out docs/perf/synthesis
    python scripts/bench_synthesis.py --cases resnet20@32x128 --variants fp32 channels_last bf16 compile
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from dfq.benchmark import (
    MODELS,
    VARIANTS,
    StepTimer,
    autocast,
    build,
    command_line,
    machine,
    peak_memory,
    saved_for_backward,
    time_calls,
)
from dfq.speed import SpeedConfig, to_memory_format
from dfq.synthesis.generators import GeneratorConfig
from dfq.synthesis.module import SynthesisModule, TeacherRunner

COLUMNS = {
    "model": "model",
    "resolution": "input",
    "batch": "batch",
    "variant": "variant",
    "bare_ms": "teacher fwd+bwd ms",
    "step_ms": "synthesis step ms",
    "ratio": "step / fwd+bwd",
    "images_per_s": "images x iterations / s",
    "peak_mib": "peak MiB",
    "saved_mib": "saved for backward MiB",
}


def measure(case: dict[str, Any]) -> dict[str, Any]:
    """One case and variant, in this process: synthesis steps in a Lightning fit, then bare passes."""
    torch.manual_seed(0)
    device = torch.device(case["device"])
    switches, precision = VARIANTS[case["variant"]]
    speed = SpeedConfig(**switches)
    teacher, normalization = build(case["model"], case["resolution"])
    batch, steps, warmup = case["batch"], case["steps"], case["warmup"]
    recipe = GeneratorConfig(num_samples=batch, batch_size=batch, iterations=warmup + steps + 1, log_every=0)
    runner = TeacherRunner(teacher, recipe, case["model"], speed)
    module = SynthesisModule(runner, normalization, recipe, batch, None, seed=0)
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, precision=precision, max_epochs=1,
        limit_train_batches=recipe.iterations, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    with peak_memory(device) as memory:
        trainer.fit(module, DataLoader(range(recipe.iterations), batch_size=1))
    step = timer.median(warmup)

    x = to_memory_format(torch.randn(batch, *normalization.shape, device=device), speed).requires_grad_()

    def bare() -> None:
        x.grad = None
        with autocast(precision, device):
            logits = runner(x, record_bn=False)
        logits.float().sum().backward()

    floor = time_calls(bare, steps, warmup, device)
    with autocast(precision, device), saved_for_backward() as saved:
        total, _, _ = module.losses()  # one step's forward: what it keeps for the backward pass
    total.float().backward()
    runner.close()
    return {
        **case,
        "bare_ms": floor * 1e3,
        "step_ms": step * 1e3,
        "ratio": step / floor,
        "images_per_s": batch / step,
        "peak_mib": memory["peak_mib"],
        "saved_mib": saved["saved_mib"],
        "machine": machine(device),
    }


def main() -> None:
    command_line(__file__, __doc__, measure, COLUMNS, MODELS, VARIANTS, "resnet20@32x128")


if __name__ == "__main__":
    main()
