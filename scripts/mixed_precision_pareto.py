"""The Pareto plot of data-free mixed precision: one run's frontier (size against summed sensitivity)
with the measured top-1 of mixed and uniform runs at one activation width (seeds averaged).

    python scripts/mixed_precision_pareto.py outputs/mixed_precision/{mixed,uniform_w}*a8_s? --a-bits 8 \
        --frontier outputs/mixed_precision/mixed3.0_a8_s0 --out docs/results/mixed_precision_resnet20_a8.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dfq.quant.mixed_precision.budget import BUDGETS
from dfq.quant.mixed_precision.pareto import measured_points, plot_frontier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "roots", nargs="+", type=Path, help="folders holding mixed and uniform run directories"
    )
    parser.add_argument("--frontier", type=Path, required=True, help="the mixed run whose frontier is drawn")
    parser.add_argument("--a-bits", type=int, default=8, help="the activation width of the points shown")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    reports = sorted(args.frontier.glob("students/*/mixed_precision.json"))
    if not reports:
        print(f"error: no students/*/mixed_precision.json under {args.frontier}", file=sys.stderr)
        return 2
    report = json.loads(reports[0].read_text())
    kind = report["options"]["budget_kind"]
    points = measured_points(args.roots, args.a_bits, kind)
    plot_frontier(report["frontier"], points, BUDGETS[kind].unit, args.out)
    print(f"wrote {args.out}: {len(points)} measured settings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
