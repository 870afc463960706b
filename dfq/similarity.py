"""`python -m dfq.similarity model=resnet20 split=test`: the BNS data-similarity score of a data set
against a model (the work itself: `dfq.synthesis.similarity.batchnorm_similarity`)."""

from __future__ import annotations

from dataclasses import asdict

import hydra
from omegaconf import DictConfig

from dfq.cli import hydra_command
from dfq.config import SimilarityConfig, validate
from dfq.io import save_json
from dfq.pipeline import load_teacher
from dfq.synthesis.similarity import SimilarityScore, batchnorm_similarity, gaussian_noise


def similarity_from_config(cfg: DictConfig) -> SimilarityScore:
    """The command line's work: build the teacher, take the data, score it, print and save."""
    config = validate(cfg)
    data = hydra.utils.instantiate(cfg.dataset) if cfg.get("dataset") else None
    teacher = load_teacher(cfg.model, data)
    if config.split == "gaussian":
        x = gaussian_noise(teacher.normalization, config.num_samples or 256, config.seed)
    else:
        x = data.split(config.split, teacher.normalization).tensors[0]
        x = x[: config.num_samples] if config.num_samples else x
    score = batchnorm_similarity(teacher.module, x, config.batch_size, teacher.name)
    print(f"dfq-similarity: {teacher.name}, {config.split}: BNS divergence per layer", flush=True)
    print(score.table(), flush=True)
    if config.out:
        save_json({"model": teacher.name, "split": config.split, **asdict(score)}, config.out)
    return score


def main() -> None:
    """`python -m dfq.similarity`: compose `conf/similarity.yaml`, score a data set."""
    score = lambda cfg: similarity_from_config(cfg).mean  # noqa: E731
    hydra_command("dfq-similarity", "similarity", SimilarityConfig, score)()


if __name__ == "__main__":
    main()
