"""scripts/fill_sample_cache.py: several hand-started processes share a run's synthesis batches."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch

import dfq.synthesis.batches as batches
from dfq.config import compose_config, validate
from dfq.errors import UserError
from dfq.pipeline import load_teacher
from dfq.samples import make_samples
from tests.conftest import load_script

TINY = [
    "dataset.image_size=8",
    "model.input.image_size=8",
    "model.train_if_missing.epochs=3",
    "generator=bn_stats",
    "generator.num_samples=6",
    "generator.batch_size=2",
    "generator.iterations=2",
]


def test_two_shares_fill_the_cache_and_the_run_only_joins_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    script = load_script("fill_sample_cache")
    assert script.main([*TINY, "--rank", "1", "--ranks", "2"]) == 0
    assert "rank 1/2: 1 batches" in capsys.readouterr().out
    path = script.fill(TINY, 0, 2)
    assert sorted(p.name for p in Path(f"{path}.parts").iterdir()) == [f"batch_0000{i}.pt" for i in range(3)]

    cfg = compose_config([*TINY, "logger=none"], str(tmp_path))
    config = validate(cfg)
    data = hydra.utils.instantiate(cfg.dataset)
    teacher = load_teacher(cfg.model, data)
    whole = make_samples(teacher, config.generator, data, tmp_path / "whole.pt", {"logger": False})

    def no_batches(*args):
        raise AssertionError("every batch should have been made by the shares")

    monkeypatch.setattr(batches, "synthesize_batch", no_batches)
    joined = make_samples(teacher, config.generator, data, path, {"logger": False})
    assert torch.equal(joined.x, whole.x) and joined.y is None and whole.y is None
    assert path.is_file() and not Path(f"{path}.parts").exists()
    assert script.fill(TINY, 1, 2) == path and not Path(f"{path}.parts").exists()  # nothing left to make


def test_a_smaller_set_is_cut_from_a_larger_one_without_synthesis(tmp_path, monkeypatch):
    monkeypatch.setenv("DFQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    cfg = compose_config([*TINY, "logger=none"], str(tmp_path))
    data = hydra.utils.instantiate(cfg.dataset)
    teacher = load_teacher(cfg.model, data)
    larger = make_samples(teacher, validate(cfg).generator, data, tmp_path / "larger.pt", {"logger": False})
    monkeypatch.setattr(batches, "synthesize_batch", lambda *args: pytest.fail("nothing is synthesized"))
    script = load_script("fill_sample_cache")
    smaller = [*TINY, "generator.num_samples=3"]
    path = script.fill(smaller, 0, 1, tmp_path / "larger.pt")
    config = validate(compose_config([*smaller, "logger=none"], str(tmp_path)))
    joined = make_samples(teacher, config.generator, data, path, {"logger": False})
    assert torch.equal(joined.x, larger.x[:3]) and len(joined) == 3
    seconds = larger.meta[batches.SYNTHESIS_TIME] * 3 / 6
    assert joined.meta[batches.SYNTHESIS_TIME] == pytest.approx(seconds, abs=1e-3)
    with pytest.raises(UserError, match="another recipe"):
        script.fill([*smaller, "generator.iterations=3"], 0, 1, tmp_path / "larger.pt")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rank", "2", "--ranks", "2"], "--rank 2 must lie in 0..1 (--ranks 2)"),
        (["generator=real", "--rank", "0", "--ranks", "2"], "generator real has source real: nothing to"),
    ],
)
def test_a_bad_share_is_one_line(argv, message, capsys):
    assert load_script("fill_sample_cache").main(argv) == 2
    assert capsys.readouterr().err.startswith(f"fill_sample_cache: error: {message}")
