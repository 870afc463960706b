"""Hydra entry point (`python -m dfq.run`, or the `dfq` console script): compose, validate, run."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dfq.cli import hydra_command
from dfq.config import RunConfig


def run_job(cfg: DictConfig) -> float:
    """One job of a run or sweep: the whole pipeline; returns the quantized top-1 (for sweepers)."""
    from dfq.pipeline import run  # heavy imports after Hydra has parsed the command line

    return run(cfg, HydraConfig.get().runtime.output_dir)["q_top1"]


main = hydra_command("dfq", "config", RunConfig, run_job)

if __name__ == "__main__":
    main()
