"""The real command line: a two-generator multirun, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Tiny digits settings: 8x8 images, a teacher trained for a few epochs, a handful of samples.
TINY = [
    "dataset.image_size=8",
    "model.input.image_size=8",
    "model.train_if_missing.epochs=3",
    "generator.num_samples=32",
    "generator.batch_size=32",
    "generator.iterations=5",
    "compare=none",
    "finetune.epochs=1",
    "logger=csv",
]


def dfq(args: list[str], cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DFQ_CACHE": str(cache), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "dfq.run", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.slow
def test_multirun_over_two_generators(tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = dfq(["-m", "generator=bn_stats,gaussian", *TINY, f"hydra.sweep.dir={sweep}"], tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert [m["generator"] for m in metrics] == ["bn_stats", "gaussian"]
    for m, job in zip(metrics, sorted(sweep.glob("*/metrics.json")), strict=True):
        assert 0.0 <= m["q_top1"] <= 100.0 and m["fp_top1"] > 50.0
        assert (job.parent / "config.yaml").is_file()
        assert (job.parent / f"samples_{m['generator']}.png").stat().st_size > 0
        assert list((tmp_path / "cache" / "samples").rglob(f"{m['generator']}-*.pt"))  # shared sample cache
    assert "W4A4 calibrated" in result.stdout


def final_scalars(run: Path) -> dict[str, float]:
    """The `final/...` scalars of the one TensorBoard event file under `run`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = run.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    tags = accumulator.Tags()
    assert any(tag.startswith("samples/") for tag in tags["images"]), tags["images"]
    return {t: accumulator.Scalars(t)[-1].value for t in tags["scalars"] if t.startswith("final/")}


@pytest.mark.slow
def test_tensorboard_sweep_writes_one_event_file_per_job_with_its_final_top1(tmp_path: Path):
    sweep = tmp_path / "sweep"
    tiny = [arg for arg in TINY if not arg.startswith("logger=")]
    args = ["-m", "seed=0,1", *tiny, "logger=tensorboard", f"hydra.sweep.dir={sweep}"]
    result = dfq(args, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 2 and len(list(sweep.rglob("events.out.tfevents.*"))) == 2
    for seed, job in enumerate(jobs):
        metrics = json.loads((job / "metrics.json").read_text())
        run = job / "tensorboard" / "run" / f"bn_stats-w4a4-s{seed}"
        scalars = final_scalars(run)
        assert scalars["final/q_top1"] == pytest.approx(metrics["q_top1"], abs=1e-4)
        assert scalars["final/fp_top1"] == pytest.approx(metrics["fp_top1"], abs=1e-4)


# One case per path to the one-line error (override check, schema validation, a failure during the
# run); every range message itself is checked in-process by tests/test_config.py.
@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("quant.w_bit=4", "did you mean 'w_bits'"),
        ("quant.w_bits=0", "quant.w_bits=0 is out of range"),
        (
            " ".join([*TINY, "calibrate.num_samples=100000"]),
            "calibrate.num_samples=100000 exceeds the 32 samples the set holds",
        ),
        ("model.checkpoint=/nonexistent/x.pt model.train_if_missing=null", "checkpoint not found"),
        ("dataset=cifar10_npz dataset.train=/no/a.npz dataset.test=/no/b.npz", "archive not found: /no/"),
        pytest.param(
            "trainer=ddp",
            "trainer.accelerator=gpu but no CUDA GPU is visible",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here"),
        ),
    ],
)
def test_user_error_is_one_line_with_status_2(tmp_path: Path, override: str, needle: str):
    result = dfq([*override.split(), f"hydra.run.dir={tmp_path / 'run'}"], tmp_path / "cache", timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfq: error:") and needle in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
