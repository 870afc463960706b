"""Benchmark: seconds per reconstruction iteration, unit by unit, and the whole reconstruction's
wall time, for a model at its resolution (random weights and random samples: only the time counts).

    OMP_NUM_THREADS=1 python scripts/bench_reconstruct.py --model resnet20 --recipe genie \
        --iterations 50 --out docs/perf/reconstruct_resnet20

writes <out>.json and <out>.md (a table of milliseconds per iteration per unit).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dfq.benchmark import MODELS, machine, markdown_table
from dfq.config import compose_config, validate
from dfq.io import atomic_path, save_json
from dfq.quant.calibrate import calibrate
from dfq.quant.prepare import quantize
from dfq.quant.reconstruct import reconstruct
from dfq.speed import SpeedConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--recipe", default="genie", help="a conf/reconstruct option")
    parser.add_argument("--quant", default="strict", help="a conf/quant option")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=50, help="per unit (the timing's sample)")
    parser.add_argument("--channels-last", action="store_true", help="speed.channels_last=true")
    parser.add_argument("--out", type=Path, help="write <out>.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = MODELS[args.model][0]().eval()
    x = torch.randn(args.samples, 3, args.resolution, args.resolution)
    overrides = [
        f"reconstruct={args.recipe}",
        f"quant={args.quant}",
        f"reconstruct.iterations={args.iterations}",
    ]
    config = validate(compose_config([*overrides, "logger=none", "model=resnet20"], "outputs/bench"))
    student = calibrate(quantize(model, config.quant, x[:2]), x)
    start = time.perf_counter()
    speed = SpeedConfig(channels_last=args.channels_last)
    _, units = reconstruct(student, model, x, config.reconstruct, speed=speed)
    total = time.perf_counter() - start
    per_iteration = sum(unit["seconds"] for unit in units) / (len(units) * args.iterations)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(torch.device("cpu")),
        "model": args.model,
        "recipe": args.recipe,
        "quant": args.quant,
        "channels_last": args.channels_last,
        "samples": args.samples,
        "iterations": args.iterations,
        "units": [{"unit": u["unit"], "s_per_iteration": u["seconds"] / args.iterations} for u in units],
        "mean_s_per_iteration": per_iteration,
        "wall_s": total,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "units"}, indent=1))
    for unit in result["units"]:
        print(f"{unit['unit']:<12} {unit['s_per_iteration'] * 1000:8.1f} ms/iteration")
    if args.out:
        save_json(result, args.out.with_suffix(".json"))
        with atomic_path(args.out.with_suffix(".md")) as tmp:
            tmp.write_text(markdown(result))


def markdown(result: dict) -> str:
    """The benchmark as a markdown table (one row per unit), its command and machine."""
    rows = [{"unit": u["unit"], "ms": u["s_per_iteration"] * 1000} for u in result["units"]]
    rows += [{"unit": f"all {len(rows)} units", "ms": f"{result['mean_s_per_iteration'] * 1000:.1f} (mean)"}]
    extrapolated = result["mean_s_per_iteration"] * len(result["units"]) / 60
    layout = "channels_last" if result.get("channels_last") else "contiguous"  # absent: written before it
    return "\n".join(
        [
            f"Reconstruction speed: {result['model']}, recipe `{result['recipe']}`, "
            f"quant `{result['quant']}`, {layout} layout, "
            f"{result['samples']} samples, {result['iterations']} timed iterations per unit.",
            "",
            markdown_table(rows, {"unit": "unit", "ms": "ms per iteration"}),
            "",
            f"Wall time of the timed run: {result['wall_s']:.1f} s; at this speed, 1,000 iterations per unit "
            f"take {extrapolated * 1000:.1f} minutes.",
            "",
            f"machine: {result['machine']}",
            "",
            f"command: `{result['command']}`",
            "",
        ]
    )


if __name__ == "__main__":
    main()
