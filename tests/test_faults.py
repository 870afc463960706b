"""Faults lose no work: non-finite losses stop with the step named, interrupted runs resume exactly,
and checkpoints are never half-written."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dfq.data.sample_set import SampleSet
from dfq.distill.distill import distill
from dfq.distill.module import FinetuneConfig
from dfq.faults import AtomicCheckpointIO, NonFiniteLossError
from dfq.quant.calibrate import calibrate
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize
from dfq.synthesis.batches import synthesize
from dfq.synthesis.generators import GeneratorConfig

JOBS = Path(__file__).parent / "fault_jobs.py"
TRAINER = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}


def test_nan_in_distillation_stops_at_the_step_it_appears(tiny_entry):
    x = torch.randn(64, 3, 8, 8)
    student = calibrate(quantize(tiny_entry.module, QuantPolicy(), x[:2]), x)
    with torch.no_grad():
        student.fc.bias[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"distillation: the loss became non-finite at step 0"):
        distill(
            student, tiny_entry.module, x, FinetuneConfig(epochs=2, batch_size=32), trainer_options=TRAINER
        )


def test_checkpoints_are_written_atomically(tmp_path: Path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    assert torch.load(target)["step"] == 1

    def crash(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, target)
    assert torch.load(target)["step"] == 1  # the old checkpoint is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left behind


def run_job(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(JOBS), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The result file of each job run without interruption, made once for both signals."""
    made: dict[str, Path] = {}

    def result(kind: str) -> Path:
        if kind not in made:
            root = tmp_path_factory.mktemp(f"uninterrupted_{kind}")
            checkpoints = [str(root / "ckpt")] if kind == "distill" else []
            job = run_job(kind, *checkpoints, str(root / "result.pt"))
            assert job.wait(timeout=300) == 0, job.stderr.read().decode()[-2000:]
            made[kind] = root / "result.pt"
        return made[kind]

    return result


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_distillation_resumes_to_the_uninterrupted_result(
    tmp_path: Path, signum: int, uninterrupted
):
    checkpoints = tmp_path / "ckpt"
    job = run_job("distill", str(checkpoints), str(tmp_path / "resumed.pt"))
    deadline = time.time() + 120
    while not (checkpoints / "last.ckpt").exists() and time.time() < deadline and job.poll() is None:
        time.sleep(0.01)
    job.send_signal(signum)
    assert job.wait(timeout=120) != 0  # an interrupted stage never exits as if it had finished
    assert not (tmp_path / "resumed.pt").exists(), "the job finished before the signal: make it longer"
    assert (checkpoints / "last.ckpt").is_file()
    torch.load(checkpoints / "last.ckpt", weights_only=False)  # intact, loadable

    again = run_job("distill", str(checkpoints), str(tmp_path / "resumed.pt"))
    assert again.wait(timeout=300) == 0, again.stderr.read().decode()[-2000:]
    expected, resumed = torch.load(uninterrupted("distill")), torch.load(tmp_path / "resumed.pt")
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key


def test_nan_in_synthesis_stops_and_writes_nothing(tmp_path: Path, tiny_entry):
    entry = tiny_entry
    entry.module.bn2.running_var[0] = -1.0  # log of a negative variance: the BNS loss is NaN
    path = tmp_path / "set.pt"
    recipe = GeneratorConfig(num_samples=32, batch_size=16, iterations=5)
    with pytest.raises(NonFiniteLossError, match=r"synthesis of batch 0: .*non-finite at step 0 \(loss=nan"):
        synthesize(entry, recipe, path, trainer_options=TRAINER)
    assert not path.exists() and not list(tmp_path.rglob("*.pt"))


def test_same_seed_gives_bit_identical_samples(tiny_entry):
    recipe = GeneratorConfig(num_samples=24, batch_size=16, iterations=10, seed=5)
    first = synthesize(tiny_entry, recipe, trainer_options=TRAINER)
    second = synthesize(tiny_entry, recipe, trainer_options=TRAINER)
    assert torch.equal(first.x, second.x)
    other = synthesize(tiny_entry, GeneratorConfig(num_samples=24, batch_size=16, iterations=10, seed=6),
                       trainer_options=TRAINER)  # fmt: skip
    assert not torch.equal(first.x, other.x)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_synthesis_resumes_to_the_uninterrupted_result(
    tmp_path: Path, signum: int, uninterrupted
):
    path = tmp_path / "resumed.pt"
    parts = tmp_path / "resumed.pt.parts"
    job = run_job("synthesize", str(path))
    deadline = time.time() + 120
    while not list(parts.glob("batch_*.pt")) and time.time() < deadline and job.poll() is None:
        time.sleep(0.01)
    job.send_signal(signum)
    assert job.wait(timeout=120) != 0
    assert not path.exists(), "the job finished before the signal: make it longer"
    finished = sorted(parts.glob("batch_*.pt"))
    assert 1 <= len(finished) < 8
    for part in finished:
        SampleSet.load(part)  # every file left behind is whole

    again = run_job("synthesize", str(path))
    assert again.wait(timeout=300) == 0, again.stderr.read().decode()[-2000:]
    assert torch.equal(SampleSet.load(path).x, SampleSet.load(uninterrupted("synthesize")).x)
    assert not parts.exists()
