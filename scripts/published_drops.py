"""dfq's QAT rows beside the published data-free methods, in drops from each one's full precision.

    python scripts/published_drops.py docs/results/published_resnet20.csv --model resnet20 \
        --out docs/results/published_resnet20_drops

writes <out>.md and <out>.png (dfq's rows, one per data source, then SynQ, PLF, HAST, IntraQ, GDFQ).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfq.errors import UserError
from dfq.io import atomic_path
from dfq.results import aggregate, read_table
from dfq.results.published import drop_rows, drops_markdown, plot_drops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path, help="a CSV written by scripts/collect_results.py")
    parser.add_argument("--model", default="resnet20", help="the model whose rows are compared")
    parser.add_argument("--out", type=Path, required=True, help="output prefix: <out>.md and <out>.png")
    args = parser.parse_args(argv)
    try:
        entries = drop_rows(aggregate([], [read_table(args.table)]), args.model)
    except UserError as error:
        print(f"published_drops: error: {error}", file=sys.stderr)
        return 2
    markdown = args.out.with_suffix(".md")
    with atomic_path(markdown) as tmp:
        Path(tmp).write_text(drops_markdown(entries), encoding="utf-8")
    plot_drops(entries, args.model, args.out.with_suffix(".png"))
    print(markdown, args.out.with_suffix(".png"), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
