"""The benchmark scripts run end to end on a tiny case and write the tables docs/PERFORMANCE.md quotes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from dfq.benchmark import StepTimer, markdown_table, saved_for_backward, time_calls
from tests.conftest import load_script

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(name: str, args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPTS / name), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "header"),
    [("bench_synthesis.py", "step / fwd+bwd"), ("bench_qat.py", "W4A4 / float")],
)
def test_benchmark_writes_its_table_and_rows(tmp_path: Path, script: str, header: str):
    out = tmp_path / "bench"
    args = ["--cases", "resnet20@8x4", "--variants", "fp32", "channels_last", "--steps", "2", "--warmup", "1"]
    result = run_script(script, [*args, "--threads", "1", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["variant"] for r in rows] == ["fp32", "channels_last"]
    assert all("error" not in r and r["ratio"] > 0 and r["peak_mib"] >= 0 for r in rows)
    table = out.with_suffix(".md").read_text()
    assert header in table and "| resnet20 | 8 | 4 | channels_last |" in table and "machine:" in table


def test_a_bad_case_is_named_with_the_expected_form():
    result = run_script("bench_synthesis.py", ["--cases", "resnet20-32"])
    assert result.returncode != 0 and "expected MODEL@RESOLUTIONxBATCH" in result.stderr


def test_step_timer_takes_the_median_gap_after_warmup():
    timer = StepTimer()
    timer.stamps = [0.0, 10.0, 11.0, 13.0, 14.0]  # gaps 10 (warm-up), 1, 2, 1
    assert timer.median(warmup=1) == 1.0
    with pytest.raises(ValueError, match="need more than warmup"):
        StepTimer().median(warmup=1)


def test_time_calls_measures_the_call():
    assert 0.004 < time_calls(lambda: time.sleep(0.005), steps=3, warmup=1, device=torch.device("cpu")) < 0.5


def test_markdown_table_formats_numbers_and_missing_values():
    table = markdown_table([{"a": 1.23456, "b": None}, {"a": 123.456, "b": "x"}], {"a": "A", "b": "B"})
    assert table.splitlines() == ["| A | B |", "|---|---|", "| 1.23 | - |", "| 123.5 | x |"]


def test_saved_for_backward_counts_activations_and_what_checkpointing_drops():
    x = torch.randn(256, 1024, requires_grad=True)  # 1 MiB
    with saved_for_backward() as plain:
        x.exp().exp().sum()  # each exp saves its 1 MiB output
    with saved_for_backward() as recomputed:
        checkpoint(lambda t: t.exp().exp(), x, use_reentrant=False).sum()
    assert plain["saved_mib"] == pytest.approx(2.0)
    assert recomputed["saved_mib"] == pytest.approx(1.0)  # only the region's input, kept to recompute


def test_reconstruction_benchmark_table_extrapolates_to_the_recipes_iterations():
    bench = load_script("bench_reconstruct")
    units = [{"unit": "conv1", "s_per_iteration": 0.01}, {"unit": "layer1.0", "s_per_iteration": 0.05}]
    result = {"model": "resnet20", "recipe": "genie", "quant": "strict", "samples": 64, "iterations": 10,
              "units": units, "mean_s_per_iteration": 0.03, "wall_s": 1.0, "machine": "cpu",
              "command": "python x"}  # fmt: skip
    text = bench.markdown(result)
    assert "| layer1.0 | 50.0 |" in text and "| all 2 units | 30.0 (mean) |" in text
    assert "1,000 iterations per unit take 1.0 minutes" in text  # 0.03 s x 2 units x 1,000 / 60
    assert "contiguous layout" in text  # results written before --channels-last existed
    assert "channels_last layout" in bench.markdown(result | {"channels_last": True})
