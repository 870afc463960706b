"""The student's steps: the registry, their records in metrics.json, the config check, and that a run
through the steps gives the numbers of the plain calibrate -> distill chain it replaced."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytest
import torch
from torch.utils.data import TensorDataset

from dfq.config import ConfigError, compose_config, validate
from dfq.data.sample_set import SampleSet
from dfq.distill.distill import distill
from dfq.distill.module import FinetuneConfig
from dfq.evaluate import top1
from dfq.pipeline import compress, evaluate_source, limit, load_teacher, run
from dfq.quant.calibrate import CalibrateConfig
from dfq.quant.observers import SampleObserver
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize
from dfq.results import aggregate, collect
from dfq.steps import STEPS, StepContext, check_steps, run_steps

TINY = ["dataset.image_size=8", "model.input.image_size=8", "model.train_if_missing.epochs=3",
        "generator.num_samples=32", "generator.batch_size=16", "generator.iterations=5", "compare=none",
        "finetune.epochs=2", "finetune.crop_padding=0", "logger=none", "paths.sample_cache=null"]  # fmt: skip
OPTIONS = {"logger": False, "enable_progress_bar": False, "accelerator": "cpu", "devices": 1}


def test_a_student_does_not_depend_on_the_random_state_its_steps_start_from(tmp_path: Path, monkeypatch):
    """As after a synthesis or after reading the samples from the cache: the same student either way."""
    monkeypatch.setenv("DFQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        SampleObserver.__init__, "__defaults__", (None, None, 64)
    )  # every observer subsamples
    cfg = compose_config([*TINY, "finetune=none"], str(tmp_path))
    config, data = validate(cfg), hydra.utils.instantiate(cfg.dataset)
    teacher = load_teacher(cfg.model, data)
    test = limit(data.split("test", teacher.normalization), 64)
    samples = SampleSet(torch.randn(32, 1, 8, 8))  # the digits teacher: one channel
    exported = []
    for state in (1, 2):
        torch.manual_seed(state)
        evaluate_source(teacher, samples, config, test, OPTIONS, tmp_path / str(state))
        exported.append(torch.load(tmp_path / str(state) / "quantized.pt", weights_only=False))
    assert exported[0].keys() == exported[1].keys()
    assert all(
        torch.equal(exported[0][k], exported[1][k]) for k in exported[0] if torch.is_tensor(exported[0][k])
    )


def test_a_run_through_the_steps_gives_the_numbers_of_the_plain_chain(tmp_path: Path, monkeypatch):
    """What `evaluate_source` computed before the steps: compress (quantize + calibrate), then distill."""
    monkeypatch.setenv("DFQ_CACHE", str(tmp_path / "cache"))
    cfg = compose_config(TINY, str(tmp_path))
    metrics = run(cfg, tmp_path)
    config = validate(cfg)
    data = hydra.utils.instantiate(cfg.dataset)
    teacher = load_teacher(cfg.model, data)
    test = limit(data.split("test", teacher.normalization), config.evaluate.max_samples)
    samples = SampleSet.load(tmp_path / "samples" / "bn_stats.pt")
    student = compress(teacher.module, samples, config.quant, config.calibrate)
    ptq = top1(student, test)
    options = {"logger": False, "enable_progress_bar": False, "accelerator": "cpu", "devices": 1}
    distill(student, teacher.module, samples.x, config.finetune, None, options)
    result = metrics["sources"]["bn_stats"]
    assert result["ptq_top1"] == ptq and result["qat_top1"] == top1(student, test)
    recorded = json.loads((tmp_path / "metrics.json").read_text())["sources"]["bn_stats"]["steps"]
    assert [r["name"] for r in recorded] == ["calibrate", "distill"]
    assert [r["top1"] for r in recorded] == [result["ptq_top1"], result["qat_top1"]]
    assert recorded[1]["options"]["epochs"] == 2 and "seed" not in recorded[1]["options"]
    assert recorded[0]["options"] == {
        "num_samples": None,
        "batch_size": 128,
        "fold_bn": False,
        "bn_reestimate": True,  # the embedded default's calibrate=reestimated
        "bias_correction": False,
    }
    assert all(r["wall_time_s"] >= 0 for r in recorded)


def test_a_reconstruction_steps_record_reaches_the_collectors_columns(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DFQ_CACHE", str(tmp_path / "cache"))
    overrides = [*TINY, "reconstruct=qdrop", "reconstruct.iterations=5", "finetune=none"]
    metrics = run(compose_config(overrides, str(tmp_path / "run")), tmp_path / "run")
    steps = metrics["sources"]["bn_stats"]["steps"]
    assert [s["name"] for s in steps] == ["calibrate", "reconstruct"]
    assert metrics["sources"]["bn_stats"]["reconstruct_top1"] == steps[1]["top1"]
    (row,) = aggregate(collect([tmp_path / "run"]))
    assert row["steps"] == "calibrate+reconstruct" and row["reconstruct"] == "qdrop"
    assert row["reconstruct.drop_probability"] == "0.5" and row["top1_mean"] == steps[1]["top1"]
    assert "reconstruct.seed" not in row and "seed" not in steps[1]["options"]  # seeds aggregate
    assert (tmp_path / "run" / "students" / "bn_stats" / "reconstruct" / "state.pt").is_file()


def test_steps_run_from_python_and_skip_an_inactive_one(tiny_entry):
    """Without Hydra: the registry's functions on a tiny network; distillation at 0 epochs is skipped."""
    x, y = torch.randn(16, 3, 8, 8), torch.arange(16) % 4
    student = quantize(tiny_entry.module, QuantPolicy(w_bits=4, a_bits=4), x[:2])
    options = {"calibrate": CalibrateConfig(), "finetune": FinetuneConfig(epochs=0)}
    context = StepContext(tiny_entry.module, SampleSet(x, y))
    _, records = run_steps(student, ["calibrate", "distill"], options.get, context, TensorDataset(x, y))
    assert [r["name"] for r in records] == ["calibrate"] and 0 <= records[0]["top1"] <= 100
    assert STEPS["calibrate"].metric == "ptq_top1" and STEPS["distill"].label == "QAT"


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (["calibrate", "polish"], r"student.steps holds 'polish', which is not a step; valid: \['calibrate'"),
        (["distill"], r"student.steps=\['distill'\] must start with 'calibrate'"),
        (["calibrate", "distill", "distill"], "name each step once"),
    ],
)
def test_bad_step_lists_are_one_line_errors(steps, message):
    with pytest.raises(ValueError, match=message):
        check_steps(steps)
    cfg = compose_config([f"student.steps=[{','.join(steps)}]"])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
