"""Regenerate the README's sample output from a real run of its command, on this machine.

    python scripts/readme_sample.py       # run `python -m dfq.run` in an empty cache, rewrite the block
    python scripts/readme_sample.py --seeds 0 1 2 3 4 --out docs/perf/readme_seeds.md

The first form runs the README's command exactly (a fresh cache, so the teacher is trained as on a new
machine), then replaces the text between the README's `readme-sample` markers with the printed table,
the CPU it ran on and the wall time. The second runs it once per seed and writes a table of every
printed number per seed with mean and spread, which the README's sentences must hold over.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- readme-sample:begin -->", "<!-- readme-sample:end -->"
# a row: its name, calibrated and fine-tuned top-1 (or -), then any size columns
ROW = re.compile(r"^(\w[\w ]*?)\s{2,}([\d.]+)(?:\s+([\d.]+|-))?(?:\s+\S+)*$")


def cpu_name() -> str:
    """The processor's model name as the kernel reports it."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_default(overrides: list[str], cache: Path) -> tuple[str, float]:
    """Run `python -m dfq.run` (plus overrides) with `cache` as its cache; its printed table and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DFQ_CACHE": str(cache)}
        command = [sys.executable, "-m", "dfq.run", *overrides, f"hydra.run.dir={Path(tmp) / 'run'}"]
        start = time.time()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.time() - start
    if done.returncode != 0:
        raise SystemExit(f"readme_sample: the run failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("dfq: "))
    last = next(i for i, line in enumerate(lines) if line.startswith("full precision"))
    return "\n".join(lines[first : last + 1]), seconds


def parse_table(table: str) -> dict[str, list[float | None]]:
    """Row name -> its numbers (calibrated, fine-tuned) from a printed table."""
    rows = {}
    for line in table.splitlines()[2:]:
        match = ROW.match(line.strip())
        if match:
            values = [match.group(2), match.group(3)]
            rows[match.group(1).strip()] = [None if v in (None, "-") else float(v) for v in values]
    return rows


def sample_block(table: str, seconds: float, load: float) -> str:
    machine = f"{os.cpu_count()}-core {platform.machine()} {cpu_name()}, no GPU, torch {torch.__version__}"
    return (
        f"{BEGIN}\n```\n{table}\n```\n\n"
        f"(`python -m dfq.run` with an empty cache on a {machine}; {seconds / 60:.1f} min wall time at a "
        f"load average of {load:.1f} before it started (0: an idle machine). "
        f"Regenerate with `python scripts/readme_sample.py`.)\n{END}"
    )


def rewrite_readme(block: str, readme: Path) -> None:
    """Replace the marked block of `readme`, written through a temporary file."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"readme_sample: {readme} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(head + block + tail)
    tmp.replace(readme)


def seed_table(seeds: list[int]) -> str:
    """Markdown: every printed number per seed (one fresh cache: the teacher is trained once, as its
    training does not depend on the run's seed), then mean, sample std and range."""
    results, cache = {}, Path(tempfile.mkdtemp(prefix="dfq-readme-"))
    for seed in seeds:
        table, seconds = run_default([f"seed={seed}"], cache)
        results[seed] = parse_table(table)
        print(f"seed {seed}: {seconds:.0f} s\n{table}", flush=True)
    first = results[seeds[0]]
    columns = [(row, i) for row, values in first.items() for i, v in enumerate(values) if v is not None]
    names = [f"{row} {'calibrated' if i == 0 else 'fine-tuned'}" for row, i in columns]
    lines = ["| seed | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for seed in seeds:
        lines.append(f"| {seed} | " + " | ".join(f"{results[seed][r][i]:.2f}" for r, i in columns) + " |")
    cells = []
    for row, i in columns:
        values = [results[s][row][i] for s in seeds]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        cells.append(f"{statistics.mean(values):.2f} ± {spread:.2f} ({min(values):.2f}-{max(values):.2f})")
    lines.append("| mean ± std (min-max) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", help="run once per seed and report the spread")
    parser.add_argument("--out", type=Path, help="with --seeds: also write the markdown table here")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    if args.seeds:
        table = seed_table(args.seeds)
        header = f"`python -m dfq.run seed=<k>`, empty cache each, on a {os.cpu_count()}-core {cpu_name()}"
        print(table)
        if args.out:
            args.out.write_text(f"{header}\n\n{table}\n")
        return 0
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as cache:
        table, seconds = run_default([], Path(cache))
    rewrite_readme(sample_block(table, seconds, load), args.readme)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
