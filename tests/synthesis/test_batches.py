"""Resumable batch-by-batch synthesis (dfq.synthesis.batches), saved-set reuse, and `dfq.synthesize`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dfq.synthesis.batches as synthesize_module
from dfq.config import RunConfig
from dfq.data.sample_set import SampleSet, SampleSetError
from dfq.errors import UserError
from dfq.samples import SAMPLE_SOURCES, make_samples
from dfq.synthesis.batches import synthesize
from dfq.synthesis.generators import GeneratorConfig

RECIPE = {
    "name": "bn_stats_inception",
    "num_samples": 10,
    "batch_size": 4,
    "iterations": 4,
    "losses": {"bn_kl": 1.0, "cross_entropy": 0.1},
    "labels": "balanced",
    "jitter": 1,
    "flip": True,
}


def test_resume_after_interruption_gives_the_same_file(tiny_entry, tmp_path: Path, monkeypatch):
    recipe = GeneratorConfig(**RECIPE)
    synthesize(tiny_entry, recipe, tmp_path / "whole.pt")

    real_batch = synthesize_module.synthesize_batch
    calls = []

    def interrupted(teacher, recipe, index, *rest):
        calls.append(index)
        if index == 2:
            raise KeyboardInterrupt  # the machine goes away during the third batch
        return real_batch(teacher, recipe, index, *rest)

    monkeypatch.setattr(synthesize_module, "synthesize_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tiny_entry, recipe, tmp_path / "resumed.pt")
    assert sorted(p.name for p in (tmp_path / "resumed.pt.parts").iterdir()) == [
        "batch_00000.pt",
        "batch_00001.pt",
    ]
    assert not (tmp_path / "resumed.pt").exists()

    monkeypatch.setattr(
        synthesize_module, "synthesize_batch", lambda *a: calls.append(a[2]) or real_batch(*a)
    )
    synthesize(tiny_entry, recipe, tmp_path / "resumed.pt")
    assert calls == [0, 1, 2, 2]  # finished batches were not redone
    whole, resumed = SampleSet.load(tmp_path / "whole.pt"), SampleSet.load(tmp_path / "resumed.pt")
    assert torch.equal(whole.x, resumed.x) and torch.equal(whole.y, resumed.y)
    timed = synthesize_module.SYNTHESIS_TIME
    assert {**whole.meta, timed: None} == {**resumed.meta, timed: None}
    assert not (tmp_path / "resumed.pt.parts").exists()


def interrupt_at(index: int, monkeypatch) -> None:
    """Make synthesis stop (as a killed machine would) when it reaches batch `index`."""
    real_batch = synthesize_module.synthesize_batch

    def interrupted(teacher, recipe, at, *rest):
        if at == index:
            raise KeyboardInterrupt
        return real_batch(teacher, recipe, at, *rest)

    monkeypatch.setattr(synthesize_module, "synthesize_batch", interrupted)


@pytest.mark.parametrize("earlier", [(100.0, 20.5), (100.0, None)])
def test_a_set_records_the_seconds_its_batches_took_summed_over_resumed_runs(
    tiny_entry, tmp_path: Path, monkeypatch, earlier
):
    recipe, path = GeneratorConfig(**RECIPE), tmp_path / "s.pt"
    interrupt_at(2, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tiny_entry, recipe, path)
    monkeypatch.undo()
    timed = synthesize_module.SYNTHESIS_TIME
    for index, seconds in enumerate(earlier):  # as if the first run had spent these (None: an older dfq)
        part = SampleSet.load(synthesize_module.part_file(Path(f"{path}.parts"), index))
        assert part.meta[timed] > 0
        part.meta = {key: value for key, value in part.meta.items() if key != timed}
        part.meta |= {} if seconds is None else {timed: seconds}
        part.save(synthesize_module.part_file(Path(f"{path}.parts"), index))
    start = time.perf_counter()
    total = synthesize(tiny_entry, recipe, path).meta[timed]
    if None in earlier:
        assert total is None  # a batch of unknown cost: no total rather than a wrong one
    else:
        assert 120.5 < total <= 120.5 + time.perf_counter() - start  # plus the third batch, made now
    assert SampleSet.load(path).meta[timed] == total


def test_finished_file_is_reused_and_a_changed_recipe_is_redone(tiny_entry, tmp_path: Path, monkeypatch):
    recipe = GeneratorConfig(**RECIPE)
    first = synthesize(tiny_entry, recipe, tmp_path / "s.pt")
    monkeypatch.setattr(synthesize_module, "synthesize_batch", lambda *a: pytest.fail("recomputed"))
    assert torch.equal(synthesize(tiny_entry, recipe, tmp_path / "s.pt").x, first.x)
    monkeypatch.undo()
    changed = synthesize(tiny_entry, GeneratorConfig(**{**RECIPE, "lr": 0.5}), tmp_path / "s.pt")
    assert not torch.equal(changed.x, first.x)


def test_metadata_records_how_the_set_was_made(tiny_entry, tmp_path: Path):
    synthesize(tiny_entry, GeneratorConfig(**RECIPE), tmp_path / "s.pt")
    meta = SampleSet.load(tmp_path / "s.pt").meta
    assert meta["model"] == "tiny_bn" and meta["generator"] == "bn_stats_inception"
    assert meta["recipe"]["losses"] == RECIPE["losses"] and meta["seed"] == 0 and meta["iterations"] == 4
    assert meta["normalization"]["std"] == (0.25, 0.25, 0.25) and meta["dfq_version"]
    assert "git_revision" in meta


def test_an_unknown_source_is_one_error_naming_the_key_and_the_valid_sources(tiny_entry):
    recipe = GeneratorConfig(name="x", source="imagined", num_samples=4, losses={})
    with pytest.raises(UserError, match=r"generator.source='imagined' is not a sample source; valid: "):
        make_samples(tiny_entry, recipe, None)
    for name in SAMPLE_SOURCES:  # every name the registry holds is accepted by the run's schema
        RunConfig(generator=GeneratorConfig(name="x", source=name, losses={}))
    with pytest.raises(ValueError, match=r"compare.noise.source='imagined'"):
        RunConfig(compare={"noise": recipe})


def test_saved_source_reuses_a_file_and_refuses_another_models(tiny_entry, tmp_path: Path):
    made = synthesize(tiny_entry, GeneratorConfig(**RECIPE), tmp_path / "s.pt")
    saved = GeneratorConfig(
        name="saved", source="saved", path=str(tmp_path / "s.pt"), num_samples=8, losses={}
    )
    reused = make_samples(tiny_entry, saved, None, tmp_path / "run" / "saved.pt")
    assert torch.equal(reused.x, made.x[:8]) and torch.equal(reused.y, made.y[:8])
    assert len(SampleSet.load(tmp_path / "run" / "saved.pt")) == 8
    tiny_entry.name = "resnet20"
    with pytest.raises(SampleSetError, match="made for model 'tiny_bn', not 'resnet20'"):
        make_samples(tiny_entry, saved, None)
    with pytest.raises(SampleSetError, match="generator.path"):
        make_samples(tiny_entry, GeneratorConfig(source="saved", losses={}), None)


TINY = [
    "dataset.image_size=8",
    "model.input.image_size=8",
    "model.train_if_missing.epochs=2",
    "generator=bn_stats_inception",
    "generator.num_samples=12",
    "generator.batch_size=8",
    "generator.iterations=3",
]


def run_cli(module: str, args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DFQ_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_command_line_writes_set_and_grid_and_resumes(tmp_path: Path):
    out = tmp_path / "bns.pt"
    args = [*TINY, f"out={out}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli("dfq.synthesize", args, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out}: 12 samples (1, 8, 8) with labels" in result.stdout
    samples = SampleSet.load(out)
    assert samples.meta["model"] == "digits_cnn" and samples.meta["recipe"]["iterations"] == 3
    assert out.with_suffix(".png").stat().st_size > 0
    again = run_cli("dfq.synthesize", args, tmp_path / "cache")
    assert again.returncode == 0 and "synthesizing batch" not in again.stderr + again.stdout


def test_command_line_user_error_is_one_line_with_status_2(tmp_path: Path):
    result = run_cli(
        "dfq.synthesize", ["generator.labels=maybe", f"hydra.run.dir={tmp_path}"], tmp_path / "cache"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfq-synthesize: error:")
    assert "generator.labels='maybe' is invalid" in lines[0]


GENERATORS = sorted(
    p.stem for p in (Path(__file__).resolve().parents[2] / "dfq" / "conf" / "generator").glob("*.yaml")
)


@pytest.mark.parametrize("generator", GENERATORS)
def test_synthesize_config_composes_with_every_generator(generator: str):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from dfq.config import SynthesizeConfig, register_configs, validate

    register_configs()
    with initialize_config_module("dfq.conf", version_base="1.3"):
        cfg = compose("synthesize", overrides=["paths.output_dir=/tmp/dfq-test", f"generator={generator}"])
        similarity = compose("similarity", overrides=["paths.output_dir=/tmp/dfq-test", "split=gaussian"])
    config = validate(cfg)
    assert isinstance(config, SynthesizeConfig) and config.generator.name == generator
    assert config.out.endswith(f"digits_cnn_{generator}_n{config.generator.num_samples}_s0.pt")
    OmegaConf.to_container(similarity, resolve=True)
    assert validate(similarity).split == "gaussian"
