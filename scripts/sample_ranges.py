"""What calibration takes from sample sets: each activation quantizer's clipping range, per recipe.

Saved sample sets are grouped by the recipe in their metadata (generator, crop padding, flips, sample count,
iterations, batch size). For each group: the mean upper clipping bound of every per-tensor (activation)
quantizer at the chosen bits, the share of saturated pixels, and optionally the mean top-1 on held-out
training images (never the test split).

    python scripts/sample_ranges.py experiment=cifar10_resnet20 --bits 4 --heldout 5000:10000 \
        --sets outputs/cache/samples/resnet20/real-*.pt outputs/cache/samples/resnet20/bn_stats-*.pt
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import hydra
import torch
from torch.utils.data import Subset

from dfq.config import compose_config, validate
from dfq.data.sample_set import SampleSet
from dfq.errors import UserError
from dfq.evaluate import top1
from dfq.pipeline import compress, load_teacher
from dfq.quant.prepare import quantizers


def recipe_label(samples: SampleSet) -> str:
    """The recipe a sample set was made with, as a column name."""
    r = samples.meta["recipe"]
    if r["source"] != "synthesis":
        return f"{r['name']}, {r['num_samples']}"
    budget = f"{r['num_samples']}, {r['iterations']} it x {r['batch_size']}"
    flip = ", flip" if r.get("flip") else ""
    return f"{r['name']}, crop {r.get('pad_crop', 0)}{flip}, {budget}"


def activation_highs(student: torch.nn.Module) -> dict[str, float]:
    """The upper clipping bound of every per-tensor quantizer (the activations) of a calibrated student."""
    highs = {}
    for name, q in quantizers(student).items():
        if q.scale is not None and q.scale.numel() == 1:
            highs[name] = float((q.qmax - q.zero_point.reshape(())) * q.scale.reshape(()))
    return highs


def calibrated(teacher: torch.nn.Module, samples: SampleSet, config) -> torch.nn.Module:
    """A calibrated student, seeded: observers subsample large layers at random, and the ranges should not
    depend on which sets were calibrated before."""
    torch.manual_seed(0)
    return compress(teacher, samples, config.quant, config.calibrate)


def saturated(samples: SampleSet, normalization) -> float:
    """The share of pixel values at the ends of the valid range."""
    low, high = normalization.bounds(samples.x)
    return float(((samples.x <= low + 1e-3) | (samples.x >= high - 1e-3)).float().mean())


def report(rows: dict[str, dict], bits: int) -> str:
    """Markdown: one row per quantizer (mean upper bound), then set count, saturation, held-out top-1."""
    names = list(rows)

    def line(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(cell(rows[n]) for n in names) + " |"

    lines = [f"| W{bits}A{bits} quantizer | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines.append(line("sample sets", lambda r: str(r["sets"])))
    for layer in next(iter(rows.values()))["ranges"]:
        lines.append(line(layer, lambda r, layer=layer: f"{r['ranges'][layer]:.2f}"))
    lines.append(line("saturated pixels", lambda r: f"{r['saturated']:.3f}"))
    if rows[names[0]]["top1"] is not None:
        lines.append(line("held-out top-1 %", lambda r: f"{r['top1']:.2f}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="dfq config overrides (experiment, model, quant)")
    parser.add_argument("--bits", type=int, default=4, help="weight and activation bits")
    parser.add_argument("--sets", nargs="+", required=True, type=Path, help="saved sample sets")
    parser.add_argument("--heldout", help="start:stop of the training images to evaluate top-1 on")
    args = parser.parse_args(argv)
    try:
        overrides = [*args.overrides, f"quant.w_bits={args.bits}", f"quant.a_bits={args.bits}"]
        cfg = compose_config(overrides, "outputs/sample_ranges")
        config = validate(cfg)
        data = hydra.utils.instantiate(cfg.dataset)
        teacher = load_teacher(cfg.model, data)
        heldout = None
        if args.heldout:
            start, stop = (int(v) for v in args.heldout.split(":"))
            heldout = Subset(data.split("train", teacher.normalization), range(start, stop))
        groups: dict[str, list[SampleSet]] = {}
        for path in args.sets:
            samples = SampleSet.load(path)
            groups.setdefault(recipe_label(samples), []).append(samples)
        rows = {}
        for label, sets in groups.items():
            students = [calibrated(teacher.module, s, config) for s in sets]
            highs = [activation_highs(student) for student in students]
            rows[label] = {
                "sets": len(sets),
                "ranges": {layer: statistics.mean(h[layer] for h in highs) for layer in highs[0]},
                "saturated": statistics.mean(saturated(s, teacher.normalization) for s in sets),
                "top1": statistics.mean(top1(st, heldout, 500) for st in students) if heldout else None,
            }
    except (UserError, ValueError, OSError) as error:
        print(f"sample_ranges: error: {error}", file=sys.stderr)
        return 2
    print(report(rows, args.bits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
