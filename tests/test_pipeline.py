"""The embedded default end to end, through the plain-Python pipeline (what the README promises)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module

from dfq.config import compose_config, register_configs
from dfq.data.sample_set import SampleSet
from dfq.pipeline import format_table, run
from dfq.results import aggregate, collect
from tests.test_steps import TINY

register_configs()


@pytest.mark.slow
def test_default_run_bn_statistics_close_to_real_and_above_noise(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DFQ_CACHE", str(tmp_path / "cache"))
    with initialize_config_module("dfq.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.output_dir={tmp_path}", "logger=none"])
    metrics = run(cfg, tmp_path)
    sources = metrics["sources"]
    assert set(sources) == {"bn_stats", "real", "gaussian"}
    bns, real, noise = (sources[k]["qat_top1"] for k in ("bn_stats", "real", "gaussian"))
    assert metrics["fp_top1"] > 95.0
    assert bns >= real - 3.0, format_table(metrics)
    assert bns >= noise + 10.0, format_table(metrics)
    assert json.loads((tmp_path / "metrics.json").read_text())["q_top1"] == bns
    assert (tmp_path / "samples_bn_stats.png").stat().st_size > 0
    assert (tmp_path / "cache" / "digits_cnn_32px.pt").is_file()  # the teacher is cached for the next run


def test_two_runs_with_the_same_seed_give_equal_metrics(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DFQ_CACHE", str(tmp_path / "cache"))
    tiny = ["dataset.image_size=8", "model.input.image_size=8", "model.train_if_missing.epochs=3",
            "generator.num_samples=32", "generator.batch_size=16", "generator.iterations=5",
            "compare.real.num_samples=32", "compare.gaussian.num_samples=32", "finetune.epochs=2",
            "logger=none", "paths.sample_cache=null"]  # fmt: skip
    metrics = []
    for name in ("first", "second"):
        with initialize_config_module("dfq.conf", version_base="1.3"):
            cfg = compose("config", overrides=[f"paths.output_dir={tmp_path / name}", *tiny])
        metrics.append(run(cfg, tmp_path / name))
        metrics[-1].pop("wall_time_s")
        for result in metrics[-1]["sources"].values():
            assert all(record.pop("wall_time_s") >= 0 for record in result["steps"])
        timed = {name for name, result in metrics[-1]["sources"].items() if result.pop("synthesis_time_s", 0)}
        assert "bn_stats" in timed and "real" not in timed  # the synthesized set's own cost
    assert metrics[0] == metrics[1]
    first, second = (SampleSet.load(tmp_path / n / "samples" / "bn_stats.pt").x for n in ("first", "second"))
    assert torch.equal(first, second)


def test_mixed_precision_widths_are_recorded_reused_and_kept_apart_in_the_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("DFQ_CACHE", str(tmp_path / "cache"))
    tiny = [*TINY, "finetune=none", "paths.sample_cache=${paths.cache_dir}/samples"]
    choose = [
        *tiny,
        "mixed_precision=zeroq",
        "mixed_precision.budget=3.0",
        "mixed_precision.candidates=[2,4]",
    ]

    def source(overrides: list[str], name: str) -> dict:
        return run(compose_config(overrides, str(tmp_path / name)), tmp_path / name)["sources"]["bn_stats"]

    chosen = source(choose, "mixed")
    planned = chosen["mixed_precision"]["planned_avg_weight_bits"]
    assert chosen["size"]["avg_weight_bits"] == pytest.approx(planned) and planned <= 3.0
    widths = tmp_path / "mixed" / "students" / "bn_stats" / "mixed_precision.yaml"
    assert (widths.with_suffix(".png")).is_file()
    reuse = [*tiny, "mixed_precision=saved", f"mixed_precision.path={widths}"]
    again = source(reuse, "saved")
    assert again["size"] == chosen["size"] and again["ptq_top1"] == chosen["ptq_top1"]
    uniform = source(tiny, "uniform")
    assert uniform["size"]["avg_weight_bits"] == 4 and "mixed_precision" not in uniform
    rows = {row.get("mixed_precision", "none"): row for row in aggregate(collect([tmp_path]))}
    assert set(rows) == {"zeroq", "saved", "none"} and rows["zeroq"]["mixed_precision.budget"] == "3.0"
    assert rows["zeroq"]["weight_bytes"] == chosen["size"]["weight_bytes"] < rows["none"]["weight_bytes"]


def test_mixed_precision_widths_survive_reconstruction(tmp_path, monkeypatch):
    """Mixed precision chooses widths before the steps; block reconstruction then learns the rounding
    on those grids, and the student keeps the plan's widths and size."""
    monkeypatch.setenv("DFQ_CACHE", str(tmp_path / "cache"))
    mixed = ["mixed_precision=zeroq", "mixed_precision.budget=3.0", "mixed_precision.candidates=[2,4]"]
    overrides = [*TINY, "finetune=none", *mixed, "reconstruct=brecq", "reconstruct.iterations=5"]
    result = run(compose_config(overrides, str(tmp_path)), tmp_path)["sources"]["bn_stats"]
    assert [step["name"] for step in result["steps"]] == ["calibrate", "reconstruct"]
    planned = result["mixed_precision"]["planned_avg_weight_bits"]
    assert result["size"]["avg_weight_bits"] == pytest.approx(planned) and planned <= 3.0
    widths = yaml.safe_load((tmp_path / "students" / "bn_stats" / "mixed_precision.yaml").read_text())
    assert {entry["w_bits"] for entry in widths.values()} == {2, 4}
