"""Hydra entry point (`python -m dfq.run`, or the `dfq` console script): compose, validate, run."""

from __future__ import annotations

import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dfq.config import check_overrides, register_configs
from dfq.errors import RunFault, UserError

register_configs()
# Lightning's notes on our deliberate choices (frozen teacher in eval mode, few workers) are noise here.
for message in (".*module\\(s\\) in eval mode.*", ".*does not have many workers.*", ".*LeafSpec.*"):
    warnings.filterwarnings("ignore", message=message)


def fail(error: UserError | RunFault) -> None:
    """Report a user's mistake (exit status 2) or a fault of the run (status 1) in one line."""
    print(f"dfq: error: {error}", file=sys.stderr)
    sys.exit(2 if isinstance(error, UserError) else 1)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def run_job(cfg: DictConfig) -> float:
    """One job of a run or sweep: the whole pipeline; returns the quantized top-1 (for sweepers)."""
    from dfq.pipeline import run  # heavy imports after Hydra has parsed the command line

    try:
        metrics = run(cfg, HydraConfig.get().runtime.output_dir)
    except (UserError, RunFault) as error:
        fail(error)
    return metrics["q_top1"]


def main() -> None:
    """`dfq` / `python -m dfq.run`: check override keys against the schema, then hand over to Hydra."""
    try:
        check_overrides(sys.argv[1:])
    except UserError as error:
        fail(error)
    run_job()


if __name__ == "__main__":
    main()
