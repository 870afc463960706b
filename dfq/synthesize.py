"""`dfq-synthesize` / `python -m dfq.synthesize model=resnet20 generator=bn_stats out=samples.pt`: one
teacher, one recipe, one sample set file (the work itself: `dfq.synthesis.batches.synthesize`).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from dfq.config import validate
from dfq.data.sample_set import SampleSet
from dfq.distributed import launch
from dfq.pipeline import load_teacher, trainer_options
from dfq.record import log_sample_grid, save_grid
from dfq.samples import make_samples


def default_logger_name(cfg: DictConfig) -> None:
    """Give the logger a name of its own when its configured name refers to keys this entry lacks
    (the run's wandb name mentions quantization bits)."""
    if cfg.get("logger") and "name" in cfg.logger:
        name = OmegaConf.select(cfg, "logger.name", throw_on_resolution_failure=False)
        if name is None:
            cfg.logger.name = f"synthesize-{cfg.model.name}-{cfg.generator.name}"


def synthesize_from_config(cfg: DictConfig) -> SampleSet:
    """The command line's work: build the teacher, make (or resume) the set, write file and grid."""
    default_logger_name(cfg)
    config = validate(cfg)
    data = hydra.utils.instantiate(cfg.dataset) if cfg.get("dataset") else None
    options = trainer_options(cfg)
    teacher = load_teacher(cfg.model, data)
    world = launch(options)  # trainer=ddp: one process per device, each making its share of batches
    out = Path(config.out)
    samples = make_samples(teacher, config.generator, data, out, options, config.speed, world)
    if not world.is_zero:
        return samples
    if config.grid:
        save_grid(samples, teacher.normalization, out.with_suffix(".png"))
        log_sample_grid(
            options.get("logger"), samples, teacher.normalization, f"samples/{config.generator.name}"
        )
    labels = "with labels" if samples.y is not None else "without labels"
    print(
        f"dfq-synthesize: wrote {out}: {len(samples)} samples {tuple(samples.x.shape[1:])} {labels}",
        flush=True,
    )
    return samples


def main() -> None:
    """`dfq-synthesize` / `python -m dfq.synthesize`: compose `conf/synthesize.yaml`, write a sample set."""
    from dfq.cli import hydra_command
    from dfq.config import SynthesizeConfig

    hydra_command("dfq-synthesize", "synthesize", SynthesizeConfig, synthesize_from_config)()


if __name__ == "__main__":
    main()
