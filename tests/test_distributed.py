"""trainer=ddp on the CPU: two gloo ranks split synthesis and gather one set, and distillation runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dfq.data.sample_set import SampleSet
from dfq.distributed import World, is_distributed, single_device
from dfq.errors import UserError
from dfq.synthesis.batches import synthesize
from dfq.synthesis.generators import GeneratorConfig
from tests.test_cli import TINY

DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
SYNTH = [
    *TINY[:3],  # 8x8 digits, a teacher trained for a few epochs
    "generator.num_samples=12",
    "generator.batch_size=4",
    "generator.iterations=4",
    "grid=false",
]


def command(module: str, args: list[str], cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DFQ_CACHE": str(cache), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_batches_fall_to_ranks_round_robin():
    ranks = [World(rank=r, size=3) for r in range(3)]
    assert [[i for i in range(7) if w.owns(i)] for w in ranks] == [[0, 3, 6], [1, 4], [2, 5]]
    assert all(World().owns(i) for i in range(5))


def test_ddp_options_are_recognised_and_narrowed_to_one_device_per_rank():
    ddp = {"accelerator": "gpu", "devices": 4, "strategy": "ddp", "num_nodes": 1, "precision": "bf16-mixed"}
    assert is_distributed(ddp)
    assert not is_distributed({**ddp, "devices": 1}) and not is_distributed({**ddp, "strategy": "auto"})
    assert is_distributed({**ddp, "devices": 1, "num_nodes": 2})
    assert single_device(ddp, World(rank=5, size=8, local_rank=1)) == {
        "accelerator": "gpu", "devices": [1], "precision": "bf16-mixed",
    }  # fmt: skip
    assert single_device(ddp, World()) is ddp


def test_synthesis_on_several_ranks_needs_a_path_to_gather_through(tiny_entry):
    with pytest.raises(UserError, match="needs an output path"):
        synthesize(tiny_entry, GeneratorConfig(num_samples=4, batch_size=2), world=World(0, 2))


@pytest.mark.slow
def test_two_cpu_ranks_make_the_set_one_process_makes(tmp_path: Path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    cache = tmp_path / "cache"
    single = command("dfq.synthesize", [*SYNTH, f"out={one}"], cache)
    assert single.returncode == 0, single.stderr[-3000:]
    ranks = command("dfq.synthesize", [*SYNTH, *DDP_CPU, f"out={two}"], cache)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    a, b = SampleSet.load(one), SampleSet.load(two)
    assert len(torch.unique(b.x.flatten(1), dim=0)) == len(torch.unique(a.x.flatten(1), dim=0)) == 12
    torch.testing.assert_close(b.x, a.x, rtol=1e-4, atol=1e-4)  # batch i is seeded by i on any rank
    assert not Path(f"{two}.parts").exists()
    assert ranks.stdout.count("dfq-synthesize: wrote") == 1  # rank 0 reports, once


@pytest.mark.slow
def test_pipeline_distills_on_two_cpu_ranks(tmp_path: Path):
    run_dir = tmp_path / "run"
    result = command("dfq.run", [*TINY, *DDP_CPU, f"hydra.run.dir={run_dir}"], tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["fp_top1"] > 50.0 and 0.0 <= metrics["sources"]["bn_stats"]["qat_top1"] <= 100.0
    assert (run_dir / "students" / "bn_stats" / "quantized.pt").is_file()


def test_ddp_inside_a_local_sweep_is_refused_with_a_reason(tmp_path: Path):
    result = command("dfq.run", ["-m", *TINY, *DDP_CPU, f"hydra.sweep.dir={tmp_path}"], tmp_path / "c")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "trainer=ddp cannot start its processes inside a local -m sweep" in result.stderr
