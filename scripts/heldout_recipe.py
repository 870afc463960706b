"""One sample-set recipe judged on held-out training images (never the test split): PTQ top-1 at
W8A8, W6A6, W4A8 and W4A4, then W4A4 QAT from the calibrated student, with and without gradient
clipping. How generator recipes are chosen before any test-split run.

    python scripts/heldout_recipe.py experiment=cifar10_resnet20 generator=inception seed=0 \
        --heldout 5000:10000 --out outputs/heldout/inception.jsonl

Overrides compose as for `python -m dfq.run`; the samples come from (and go to) the shared sample
cache. One JSON line per call: the recipe's overrides, synthesis seconds, the teacher's mean top
probability and the samples' std on them, and each top-1.
"""

from __future__ import annotations

import sys

from dfq.evaluate.heldout import heldout_parser, judge_recipe, report


def main(argv: list[str] | None = None) -> int:
    parser = heldout_parser(__doc__)
    parser.add_argument("--no-qat", action="store_true", help="calibration only")
    args = parser.parse_args(argv)
    return report(
        "heldout_recipe", lambda overrides, images: judge_recipe(overrides, images, not args.no_qat), args
    )


if __name__ == "__main__":
    sys.exit(main())
