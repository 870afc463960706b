"""Runs across processes, GPUs and nodes on Lightning's launcher (`trainer=ddp`).

`launch` starts the ranks (Lightning re-runs the command once per extra device, or adopts processes a
cluster started: SLURM, torchrun) and joins their process group before any stage runs. Synthesis then
splits the sample budget: rank r optimizes batches r, r + W, r + 2W, ... (each seeded by its batch
index, so W ranks make exactly the samples one process would) and rank 0 gathers the finished batches
into one set. Distillation is Lightning's DDP on that set, the teacher replicated on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from dfq.errors import UserError

# a rank may wait at a barrier for as long as another one takes over its last synthesis batch
BARRIER_TIMEOUT = timedelta(hours=12)


@dataclass
class World:
    """This process's place among the ranks of a run; the default is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    barrier: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether work item `index` (a synthesis batch) falls to this rank: round robin."""
        return index % self.size == self.rank


def is_distributed(trainer_options: dict[str, Any]) -> bool:
    """Whether the Trainer options ask for more than one process."""
    devices = trainer_options.get("devices", 1)
    count = len(devices) if isinstance(devices, (list, tuple)) else devices
    many = (isinstance(count, int) and count > 1) or trainer_options.get("num_nodes", 1) > 1
    return many and "ddp" in str(trainer_options.get("strategy", ""))


def check_not_multirun() -> None:
    """Lightning starts extra ranks by re-running the command line; under `-m` each would re-run the whole
    sweep. Cluster launchers (hydra/launcher=slurm) start each job's ranks themselves."""
    spawning = "LOCAL_RANK" not in os.environ and "SLURM_PROCID" not in os.environ
    if spawning and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise UserError(
            "trainer=ddp cannot start its processes inside a local -m sweep; run each cell on its own, "
            "or sweep with a launcher that starts every job's processes (hydra/launcher=slurm)"
        )


def launch(trainer_options: dict[str, Any]) -> World:
    """Start (or join) the ranks the options ask for; a single process gets the default `World`."""
    if not is_distributed(trainer_options):
        return World()
    check_not_multirun()
    from lightning_fabric import Fabric
    from lightning_fabric.strategies import DDPStrategy

    fabric = Fabric(
        accelerator=trainer_options.get("accelerator", "auto"),
        devices=trainer_options.get("devices", "auto"),
        num_nodes=trainer_options.get("num_nodes", 1),
        strategy=DDPStrategy(timeout=BARRIER_TIMEOUT),
    )
    fabric.launch()
    return World(fabric.global_rank, fabric.world_size, fabric.local_rank, fabric.barrier)


def single_device(trainer_options: dict[str, Any], world: World) -> dict[str, Any]:
    """Trainer options for work one rank does alone (its synthesis batches): its own device, no DDP."""
    if world.size == 1:
        return trainer_options
    options = {k: v for k, v in trainer_options.items() if k not in ("strategy", "num_nodes", "devices")}
    on_cpu = options.get("accelerator") == "cpu"
    return {**options, "devices": 1 if on_cpu else [world.local_rank]}
