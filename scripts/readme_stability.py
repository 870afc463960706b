"""How much the default run's calibrated W4A4 number moves with its samples, per calibration variant.

    OMP_NUM_THREADS=1 python scripts/readme_stability.py --seeds 0 1 2 3 4 --out outputs/stability.jsonl

For each seed the default BNS set is synthesized once (shared cache); every variant (config overrides
on top of `calibrate=default`, the default when docs/perf/readme_stability.md was made) then
calibrates a W4A4 student on it, and also on the same set plus a tiny perturbation (N(0, eps) in
normalized space: what another CPU's float kernels do to synthesis), and is scored on the digits
*training* split (recipes are chosen on training images, never on the test split). One JSON line
per (variant, seed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import hydra
import torch

from dfq.config import compose_config, validate
from dfq.data.sample_set import SampleSet
from dfq.evaluate import top1
from dfq.pipeline import compress, load_teacher, sample_path
from dfq.samples import make_samples

BASE = ["calibrate=default"]  # the plain calibration every variant starts from
VARIANTS = {
    "default": BASE,
    "mse": [*BASE, "quant.activation.observer=mse"],
    "p99.9": [*BASE, "quant.activation.observer_options.percentile=99.9"],
    "bias_correction": [*BASE, "calibrate.bias_correction=true"],
    "bn_reestimate": [*BASE, "calibrate.bn_reestimate=true"],  # = calibrate=reestimated
}


def score(overrides: list[str], seed: int, eps: float) -> dict:
    """Train-split top-1 of the calibrated student, on the seed's set and on a perturbed copy."""
    cfg = compose_config([*overrides, f"seed={seed}", "compare=none"], "outputs/stability")
    config = validate(cfg)
    data = hydra.utils.instantiate(cfg.dataset)
    teacher = load_teacher(cfg.model, data)
    train = data.split("train", teacher.normalization)
    path = sample_path(config, teacher, config.generator, Path("outputs/stability"))
    options = {"logger": False, "enable_progress_bar": False, "accelerator": "cpu", "devices": 1}
    samples = make_samples(teacher, config.generator, data, path, options)
    noise = torch.randn(samples.x.shape, generator=torch.Generator().manual_seed(seed)) * eps
    row = {"seed": seed, "overrides": overrides}
    for key, x in (("train", samples.x), ("train_perturbed", samples.x + noise)):
        torch.manual_seed(0)
        student = compress(
            teacher.module, SampleSet(x, samples.y, samples.meta), config.quant, config.calibrate
        )
        row[key] = round(top1(student, train, 500), 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path("outputs/stability.jsonl"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        for seed in args.seeds:
            row = {"variant": name, **score(VARIANTS[name], seed, args.eps)}
            print(json.dumps(row), flush=True)
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
