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

from dfq.evaluate.heldout import heldout_parser, judge_steps, report


def main(argv: list[str] | None = None) -> int:
    return report("heldout_steps", judge_steps, heldout_parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
