"""Hydra entry point (`python -m dfq.run`, or the `dfq` console script): compose, validate, run."""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dfq.config import register_configs
from dfq.errors import UserError

register_configs()
# Lightning's notes on our deliberate choices (frozen teacher in eval mode, few workers) are noise here.
for message in (".*module\\(s\\) in eval mode.*", ".*does not have many workers.*", ".*LeafSpec.*"):
    warnings.filterwarnings("ignore", message=message)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Run the pipeline; a user error ends the run with one line and exit status 2."""
    from dfq.pipeline import run  # heavy imports after Hydra has parsed the command line

    try:
        metrics = run(cfg, HydraConfig.get().runtime.output_dir)
    except UserError as error:
        logging.getLogger("dfq").error("%s", error)
        print(f"dfq: error: {error}", file=sys.stderr)
        sys.exit(2)
    return metrics["q_top1"]


if __name__ == "__main__":
    main()
