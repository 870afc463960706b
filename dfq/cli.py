"""What every dfq command does around its work: check override keys against the schema, run under
Hydra, and end a user's mistake (status 2) or a run fault (status 1) with one line."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from dfq.errors import RunFault, UserError

# Lightning's notes on our deliberate choices (frozen teacher in eval mode, few workers) are noise here.
QUIET = (
    ".*module\\(s\\) in eval mode.*",
    ".*does not have many workers.*",
    ".*LeafSpec.*",
    ".*number of training batches.*is smaller than the logging interval.*",  # synthesis logs itself
)


def fail(program: str, error: UserError | RunFault) -> None:
    """Print `error` as one line and exit: status 2 for a user's mistake, 1 for a fault of the run."""
    print(f"{program}: error: {error}", file=sys.stderr)
    sys.exit(2 if isinstance(error, UserError) else 1)


def hydra_command(program: str, config_name: str, schema: type, work: Callable[[DictConfig], Any]):
    """A console entry point running `work(cfg)` on the composed `conf/<config_name>.yaml`."""

    @hydra.main(version_base="1.3", config_path="conf", config_name=config_name)
    def job(cfg: DictConfig) -> Any:
        try:
            return work(cfg)
        except (UserError, RunFault) as error:
            fail(program, error)

    def main() -> None:
        from dfq.config import check_overrides, register_configs

        register_configs()
        for message in QUIET:
            warnings.filterwarnings("ignore", message=message)
        try:
            check_overrides(sys.argv[1:], schema)
        except UserError as error:
            fail(program, error)
        job()

    return main
