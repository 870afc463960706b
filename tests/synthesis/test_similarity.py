"""BNS data-similarity score: exact on a hand-made case, batch-size independent, real data below noise."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dfq.synthesis.bn_stats import NoBatchNormError
from dfq.synthesis.similarity import batchnorm_similarity, gaussian_noise


def one_bn_layer(mean: list[float], var: list[float]) -> nn.Module:
    model = nn.Sequential(nn.BatchNorm2d(len(mean), eps=0.0))
    model[0].running_mean.copy_(torch.tensor(mean))
    model[0].running_var.copy_(torch.tensor(var))
    return model.eval()


def test_score_is_zero_for_matching_statistics_and_the_kl_otherwise():
    x = torch.randn(64, 2, 4, 4, dtype=torch.float64).float()
    mean = x.double().mean(dim=(0, 2, 3))
    var = x.double().var(dim=(0, 2, 3), unbiased=False)
    score = batchnorm_similarity(one_bn_layer(mean.tolist(), var.tolist()), x, batch_size=10)
    assert score.mean == pytest.approx(0.0, abs=1e-6) and score.num_samples == 64
    # running N(mu + 1, var) against data N(mu, var): KL = 1 / (2 var) per channel
    shifted = batchnorm_similarity(one_bn_layer((mean + 1).tolist(), var.tolist()), x, batch_size=10)
    assert shifted.mean == pytest.approx(float((1 / (2 * var)).sum()), rel=1e-4)
    assert list(shifted.per_layer) == ["0"]


def test_statistics_are_taken_over_the_whole_set_not_per_batch(tiny_entry):
    x = torch.randn(50, 3, 8, 8) * 0.8 + 0.2
    whole = batchnorm_similarity(tiny_entry.module, x, batch_size=50)
    batched = batchnorm_similarity(tiny_entry.module, TensorDataset(x, torch.zeros(50)), batch_size=7)
    assert batched.mean == pytest.approx(whole.mean, rel=1e-5)
    assert set(whole.per_layer) == {"bn1", "bn2"}
    assert whole.mean == pytest.approx(sum(whole.per_layer.values()) / 2)
    assert not tiny_entry.module.training


def test_model_without_batchnorm_is_refused(tiny_no_bn_entry):
    with pytest.raises(NoBatchNormError, match="tiny_no_bn"):
        batchnorm_similarity(
            tiny_no_bn_entry.module, torch.zeros(2, 3, 8, 8), model_name=tiny_no_bn_entry.name
        )


def test_real_data_scores_below_gaussian_noise_for_a_trained_network(digits_teacher):
    teacher, data = digits_teacher
    real = batchnorm_similarity(teacher.module, data.split("test", teacher.normalization), 128, teacher.name)
    train = batchnorm_similarity(
        teacher.module, data.split("train", teacher.normalization), 128, teacher.name
    )
    noise = batchnorm_similarity(teacher.module, gaussian_noise(teacher.normalization, 450, 0), 128)
    assert real.mean < 0.2 * noise.mean, (real.mean, noise.mean)
    assert train.mean < real.mean * 2 and math.isfinite(noise.mean)
    assert all(real.per_layer[name] < noise.per_layer[name] for name in real.per_layer)


@pytest.mark.slow
def test_command_line_scores_a_saved_set(tmp_path: Path):
    from dfq.data.sample_set import SampleSet

    cache = tmp_path / "cache"
    env = {**os.environ, "DFQ_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    tiny = ["model.input.image_size=8", "model.train_if_missing.epochs=2"]  # trained once, then cached

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "dfq.similarity", *tiny, f"hydra.run.dir={tmp_path / 'run'}", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    result = cli("dataset.image_size=8", "split=gaussian", "num_samples=64", f"out={tmp_path / 'noise.json'}")
    assert result.returncode == 0, result.stderr[-3000:]
    noise = json.loads((tmp_path / "noise.json").read_text())
    assert noise["num_samples"] == 64 and set(noise["per_layer"]) == {
        "features.1",
        "features.4",
        "features.7",
    }
    assert "mean" in result.stdout
    SampleSet(torch.zeros(8, 1, 8, 8)).save(tmp_path / "zeros.pt")
    result = cli("dataset=synthetic", f"dataset.path={tmp_path / 'zeros.pt'}", f"out={tmp_path / 'z.json'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "z.json").read_text())["num_samples"] == 8
    result = cli("dataset=synthetic", f"dataset.path={tmp_path / 'absent.pt'}")
    assert result.returncode == 2 and "sample set not found" in result.stderr
