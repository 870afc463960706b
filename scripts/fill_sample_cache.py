"""Fill a run's entry in the shared sample cache from several processes on one machine (no process
group, no DDP fine-tuning): process r of W makes batches r, r + W, ... (the split `trainer=ddp` uses,
each batch seeded by its index), and the run itself then only joins the finished batches.

    for r in 0 1; do OMP_NUM_THREADS=1 python scripts/fill_sample_cache.py --rank $r --ranks 2 \
        experiment=cifar10_resnet20_published generator=bn_stats_inception seed=0 & done; wait
    python -m dfq.run -m experiment=cifar10_resnet20_published seed=0     # reuses the cached batches

Overrides compose as for `python -m dfq.run`; only the main generator's samples are made.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hydra

from dfq.config import compose_config, validate
from dfq.distributed import World
from dfq.errors import UserError
from dfq.pipeline import load_teacher, sample_path, trainer_options
from dfq.synthesis.batches import synthesize_share


def fill(overrides: list[str], rank: int, ranks: int) -> Path:
    """Make this process's share of the main generator's batches beside its cache entry; the entry."""
    if not 0 <= rank < ranks:
        raise UserError(f"--rank {rank} must lie in 0..{ranks - 1} (--ranks {ranks})")
    cfg = compose_config([*overrides, "logger=none"], "outputs/fill_sample_cache")
    config = validate(cfg)
    recipe = config.generator
    if recipe.source != "synthesis":
        raise UserError(f"generator {recipe.name} has source {recipe.source}: nothing to synthesize")
    if not config.paths.sample_cache:
        raise UserError("paths.sample_cache is empty: the run would not look for these batches")
    teacher = load_teacher(cfg.model, hydra.utils.instantiate(cfg.dataset))
    path = sample_path(config, teacher, recipe, Path("."))
    made = synthesize_share(teacher, recipe, path, World(rank, ranks), trainer_options(cfg), config.speed)
    print(f"fill_sample_cache: rank {rank}/{ranks}: {made} batches beside {path}", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="dfq config overrides (experiment, generator, seed)")
    parser.add_argument("--rank", type=int, required=True, help="this process's index, 0..ranks-1")
    parser.add_argument("--ranks", type=int, required=True, help="how many processes share the batches")
    args = parser.parse_args(argv)
    try:
        fill(args.overrides, args.rank, args.ranks)
    except UserError as error:
        print(f"fill_sample_cache: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
