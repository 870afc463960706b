"""A run's student steps judged on held-out training images (never the test split): how reconstruction
and fine-tuning recipes are chosen before any test-split run.

    OMP_NUM_THREADS=1 python scripts/heldout_steps.py experiment=cifar10_resnet20 generator.num_samples=1024 \
        quant=genie bits=w4a4_ptq reconstruct=genie --out outputs/heldout/reconstruct.jsonl

Overrides compose as for `python -m dfq.run` (its main generator only); the samples come from (and go
to) the shared sample cache. One JSON line per call: the overrides, synthesis seconds, and each step's
record (options, held-out top-1, wall time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import hydra
from torch.utils.data import Subset

from dfq.config import compose_config, validate
from dfq.errors import UserError
from dfq.pipeline import evaluate_source, load_teacher, sample_path
from dfq.samples import make_samples

OPTIONS = {"logger": False, "enable_progress_bar": False, "accelerator": "cpu", "devices": 1}


def judge(overrides: list[str], heldout: range) -> dict:
    """Synthesize (or reuse) the main generator's samples and run the configured steps on them,
    scoring each on the held-out training images."""
    cfg = compose_config([*overrides, "compare=none", "logger=none"], "outputs/heldout")
    config = validate(cfg)
    data = hydra.utils.instantiate(cfg.dataset)
    teacher = load_teacher(cfg.model, data)
    images = Subset(data.split("train", teacher.normalization), heldout)
    start = time.time()
    path = sample_path(config, teacher, config.generator, Path("outputs/heldout"))
    samples = make_samples(teacher, config.generator, data, path, OPTIONS)
    row = {"overrides": overrides, "synthesis_s": round(time.time() - start)}
    result = evaluate_source(teacher, samples, config, images, OPTIONS)
    return row | {"steps": result["steps"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="dfq config overrides")
    parser.add_argument("--heldout", default="5000:10000", help="start:stop of the training images")
    parser.add_argument("--out", type=Path, help="append the row to this JSON-lines file")
    args = parser.parse_args(argv)
    start, stop = (int(v) for v in args.heldout.split(":"))
    try:
        row = judge(args.overrides, range(start, stop))
    except (UserError, ValueError, OSError) as error:
        print(f"heldout_steps: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as out:
            out.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
