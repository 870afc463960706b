"""Fill a run's entry in the shared sample cache from several processes on one machine (no process
group, no DDP fine-tuning): process r of W makes batches r, r + W, ... (the split `trainer=ddp` uses,
each batch seeded by its index), and the run itself then only joins the finished batches.

    for r in 0 1; do OMP_NUM_THREADS=1 python scripts/fill_sample_cache.py --rank $r --ranks 2 \
        experiment=cifar10_resnet20_published generator=bn_stats_inception seed=0 & done; wait
    python -m dfq.run -m experiment=cifar10_resnet20_published seed=0     # reuses the cached batches

With --from-set, a smaller set of the same recipe is cut from the first batches of a finished larger
one (no synthesis), e.g. the 256 samples of `experiment=cifar10_resnet20` from the published 5,120:

    python scripts/fill_sample_cache.py --from-set outputs/cache/samples/resnet20/<5,120 set>.pt \
        experiment=cifar10_resnet20 generator=bn_stats_inception seed=0

Overrides compose as for `python -m dfq.run`; only the main generator's samples are made.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hydra

from dfq.config import compose_config, validate
from dfq.data.sample_set import SampleSet
from dfq.distributed import World
from dfq.errors import UserError
from dfq.pipeline import load_teacher, sample_path, trainer_options
from dfq.synthesis.batches import parts_from_set, synthesize_share


def fill(overrides: list[str], rank: int, ranks: int, from_set: Path | None = None) -> Path:
    """Make this process's share of the main generator's batches beside its cache entry (or cut them all
    from the larger set `from_set`); the entry."""
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
    if from_set is not None:
        made = parts_from_set(SampleSet.load(from_set), teacher, recipe, path)
    else:
        made = synthesize_share(teacher, recipe, path, World(rank, ranks), trainer_options(cfg), config.speed)
    print(f"fill_sample_cache: rank {rank}/{ranks}: {made} batches beside {path}", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="dfq config overrides (experiment, generator, seed)")
    parser.add_argument("--rank", type=int, default=0, help="this process's index, 0..ranks-1")
    parser.add_argument("--ranks", type=int, default=1, help="how many processes share the batches")
    parser.add_argument("--from-set", type=Path, help="cut the batches from this larger set of the recipe")
    args = parser.parse_args(argv)
    try:
        fill(args.overrides, args.rank, args.ranks, args.from_set)
    except UserError as error:
        print(f"fill_sample_cache: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
