"""Run directories as dfq.record writes them, fabricated for the collector's tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from omegaconf import OmegaConf

CALIBRATION = {"num_samples": None, "batch_size": 128, "fold_bn": False, "bn_reestimate": False,
               "bias_correction": False}  # fmt: skip


def fake_run(
    run_dir: Path,
    generator: str,
    bits: tuple[int, int],
    seed: int,
    ptq: float,
    qat: float | None = None,
    first_last_bits: int | None = None,
    compare: dict[str, float] | None = None,
    pad_crop: int | None = None,
    grad_clip: float | None = None,
    records: bool = True,
    distill_options: dict | None = None,
    overrides: dict | None = None,
    generator_options: dict | None = None,
) -> Path:
    """A run directory as dfq.record writes it: metrics.json (with step records, unless `records` is
    False: a run from before them) and the resolved config.yaml."""
    iterations = {"real": 0, "gaussian": 0}.get(generator, 500)
    # an older record may hold the step's seed: the collector leaves it out, so seeds still aggregate
    tuning = {"epochs": 30, "lr": 0.005, "grad_clip": grad_clip, "seed": seed} | (distill_options or {})

    def source(ptq: float, qat: float | None) -> dict:
        steps = [{"name": "calibrate", "options": CALIBRATION, "top1": ptq, "wall_time_s": 1.0}]
        steps += [{"name": "distill", "options": tuning, "top1": qat, "wall_time_s": 9.0}] if qat else []
        accuracy = {"ptq_top1": ptq} | ({"qat_top1": qat} if qat is not None else {})
        return accuracy | ({"steps": steps} if records else {})

    sources = {generator: source(ptq, qat)}
    sources |= {name: source(value, None) for name, value in (compare or {}).items()}
    metrics = {
        "model": "resnet20",
        "generator": generator,
        "protocol": "strict",
        "w_bits": bits[0],
        "a_bits": bits[1],
        "num_samples": 256,
        "test_samples": 1000,
        "fp_top1": 91.5,
        "q_top1": qat if qat is not None else ptq,
        "sources": sources,
        "seed": seed,
        "wall_time_s": 10.0 + seed,
    }
    quantizer = {
        "granularity": "per_channel",
        "symmetric": False,
        "observer": "minmax",
        "observer_options": {},
    }
    config = {
        "experiment": "table",
        "task_name": "table",
        "seed": seed,
        "generator": {"name": generator, "source": "synthesis", "num_samples": 256, "iterations": iterations}
        | ({} if pad_crop is None else {"pad_crop": pad_crop})
        | (generator_options or {}),
        "compare": {
            name: {"name": name, "source": "real", "num_samples": 256, "iterations": 0}
            for name in compare or {}
        },
        "quant": {
            "protocol": "strict",
            "w_bits": bits[0],
            "a_bits": bits[1],
            "placement": "layer_input",
            "first_last_bits": first_last_bits,
            "overrides": overrides,
            "weight": quantizer,
            "activation": quantizer
            | {
                "granularity": "per_tensor",
                "observer": "percentile",
                "observer_options": {"percentile": 99.99},
            },
        },
        "calibrate": {"num_samples": None, "batch_size": 128},
        "finetune": {
            "enabled": qat is not None,
            "epochs": 30 if qat is not None else 0,
            "grad_clip": grad_clip,
        },
    }
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    return run_dir


def drop_column(path: Path, name: str) -> None:
    """Rewrite the CSV at `path` without column `name`: a table written before the column existed."""
    with path.open(newline="") as file:
        rows = [{k: v for k, v in row.items() if k != name} for row in csv.DictReader(file)]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
