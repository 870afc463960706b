"""A run's student steps, each judged on held-out training images (never the test split).

How reconstruction and fine-tuning recipes are chosen before any test-split run:

    OMP_NUM_THREADS=1 python scripts/heldout_steps.py experiment=cifar10_resnet20 generator.num_samples=1024 \
        quant=genie bits=w4a4_ptq reconstruct=genie --out outputs/heldout/reconstruct.jsonl

Overrides compose as for `python -m dfq.run` (its main generator only); the samples come from (and go
to) the shared sample cache. One JSON line per call: the overrides, synthesis seconds, and each step's
record (options, held-out top-1, wall time), the student's size and any mixed-precision choice.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout_recipe import OPTIONS, heldout_setup, parser_for, report  # noqa: E402

from dfq.pipeline import evaluate_source  # noqa: E402


def judge(overrides: list[str], heldout: range) -> dict:
    """Synthesize (or reuse) the main generator's samples and run the configured steps on them,
    scoring each on the held-out training images."""
    config, teacher, images, samples, row = heldout_setup(
        [*overrides, "compare=none", "logger=none"], heldout
    )
    row["overrides"] = overrides
    result = evaluate_source(teacher, samples, config, images, OPTIONS)
    chosen = {"mixed_precision": result["mixed_precision"]} if "mixed_precision" in result else {}
    return row | {"steps": result["steps"], "size": result["size"]} | chosen


def main(argv: list[str] | None = None) -> int:
    return report("heldout_steps", judge, parser_for(__doc__).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
