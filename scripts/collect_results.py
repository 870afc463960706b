"""Collect dfq run directories into a results table: CSV, markdown (mean ± std over seeds) and a plot.

    python scripts/collect_results.py outputs/cifar10_resnet20/multiruns/<time> \
        --out docs/results/cifar10_resnet20

writes <out>.csv, <out>.md and <out>.png. Every folder under the given roots that holds a metrics.json
is one run; results are aggregated only across runs whose protocol columns all agree. A .csv root is
a table written earlier: its rows are merged with the new runs (more seeds, more rows), e.g.

    python scripts/collect_results.py docs/results/cifar10_resnet20.csv outputs/<new sweep> \
        --out docs/results/cifar10_resnet20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfq.errors import UserError
from dfq.results import write_report


def default_prefix(first_root: Path) -> Path:
    """Where the report goes without --out: over the table being extended, or beside the runs."""
    return first_root.with_suffix("") if first_root.suffix == ".csv" else first_root / "results"


def earlier_title(prefix: Path) -> str | None:
    """The heading of the markdown table at `prefix`, if one is there: extending a table keeps it."""
    markdown = prefix.with_suffix(".md")
    if not markdown.is_file():
        return None
    first = markdown.read_text(encoding="utf-8").partition("\n")[0]
    return first.removeprefix("## ") if first.startswith("## ") else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="run or sweep folders, and .csv tables to extend")
    parser.add_argument(
        "--out", type=Path, help="output prefix (default: <first root>/results, or a first .csv root itself)"
    )
    parser.add_argument(
        "--title", help="heading of the markdown file (default: that of the table at --out, else Results)"
    )
    args = parser.parse_args(argv)
    prefix = args.out or default_prefix(args.roots[0])
    title = args.title or earlier_title(prefix) or "Results"
    try:
        paths = write_report(args.roots, prefix, title)
    except UserError as error:
        print(f"collect_results: error: {error}", file=sys.stderr)
        return 2
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
