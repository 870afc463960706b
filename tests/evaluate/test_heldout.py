"""Recipes judged on held-out training images (dfq.evaluate.heldout, scripts/heldout_recipe.py and
heldout_steps.py)."""

from __future__ import annotations

import json

from tests.conftest import load_script

TINY = [
    "dataset.image_size=8",
    "model.input.image_size=8",
    "model.train_if_missing.epochs=3",
    "generator=real",
    "generator.num_samples=64",
    "finetune=short",
    "finetune.epochs=1",
]


def test_real_images_calibrate_far_above_chance_and_the_row_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("DFQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    script = load_script("heldout_recipe")
    out = tmp_path / "rows.jsonl"
    assert script.main([*TINY, "--heldout", "1000:1300", "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["overrides"] == TINY and row["sample_std"] > 0.5
    assert row["W8A8"] > 80.0 and row["W4A4_qat"] > 50.0 and row["W4A4_qat_clipped"] > 50.0
    assert set(row) >= {"W6A6", "W4A8", "W4A4", "synthesis_s", "top_probability"}


def test_a_bad_override_is_one_line(tmp_path, capsys):
    script = load_script("heldout_recipe")
    assert script.main(["generator.lr=-1", "--no-qat"]) == 2
    error = "heldout_recipe: error: generator.lr=-1.0 is out of range; valid: > 0"
    assert capsys.readouterr().err.strip() == error


def test_each_step_is_scored_on_the_held_out_images(tmp_path, monkeypatch):
    monkeypatch.setenv("DFQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    script = load_script("heldout_steps")
    out = tmp_path / "rows.jsonl"
    overrides = [*TINY, "reconstruct=adaround", "reconstruct.iterations=3"]
    assert script.main([*overrides, "--heldout", "1000:1300", "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert [step["name"] for step in row["steps"]] == ["calibrate", "reconstruct", "distill"]
    assert row["steps"][0]["top1"] > 50.0 and row["steps"][1]["options"]["method"] == "adaround"
