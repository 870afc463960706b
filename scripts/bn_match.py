"""How well do images reproduce a model's BN running statistics?

Per BN layer: each channel's input variance over the images divided by its running variance (median
and minimum over channels; 1 = matched), for plain training images, the same images through the
random crops the model was trained on (`model.input.pad_crop`, or --pad), and saved sample sets. If
only the cropped images match, BNS synthesis must see its samples through those crops too.

    python scripts/bn_match.py experiment=cifar10_resnet20 --images 1024 --layers 8 \
        --samples outputs/cache/samples/resnet20/bn_stats-<digest>.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hydra
import torch
from torch import nn

from dfq.config import compose_config, validate
from dfq.data.augment import pad_crop
from dfq.data.sample_set import SampleSet
from dfq.errors import UserError
from dfq.pipeline import load_teacher
from dfq.samples import draw_real
from dfq.synthesis.bn_stats import BatchNormStatistics
from dfq.synthesis.generators import GeneratorConfig


@torch.no_grad()
def variance_ratios(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each BN layer's per-channel input variance over `x`, divided by its running variance."""
    with BatchNormStatistics(model) as stats:
        model(x)
    return {s.name: s.batch_var / s.running_var for s in stats.layers}


def table(ratios: dict[str, dict[str, torch.Tensor]], layers: int | None) -> str:
    """Markdown: one row per BN layer, `median / min` of the ratio for each source."""
    names = list(next(iter(ratios.values())))[:layers]
    lines = ["| BN layer | " + " | ".join(ratios) + " |", "|---|" + "---|" * len(ratios)]
    for name in names:
        cells = [f"{r[name].median():.2f} / {r[name].min():.2f}" for r in ratios.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="dfq config overrides (model, dataset, experiment)")
    parser.add_argument("--images", type=int, default=1024, help="training images to measure")
    parser.add_argument("--pad", type=int, help="crop padding (default: model.input.pad_crop)")
    parser.add_argument("--layers", type=int, help="only the first N BN layers")
    parser.add_argument("--samples", nargs="*", default=[], type=Path, help="saved sample sets to measure")
    args = parser.parse_args(argv)
    try:
        cfg = compose_config(args.overrides, "outputs/bn_match")
        config = validate(cfg)
        data = hydra.utils.instantiate(cfg.dataset)
        teacher = load_teacher(cfg.model, data)
        x = draw_real(teacher, GeneratorConfig(name="real", source="real", num_samples=args.images), data).x
        pad = config.model.input.pad_crop if args.pad is None else args.pad
        black = teacher.normalization.bounds(x)[0]
        sources = {"training images": x}
        sources[f"through crops (pad {pad})"] = pad_crop(x, pad, black, torch.Generator().manual_seed(0))
        sources |= {path.name: SampleSet.load(path).x for path in args.samples}
        ratios = {name: variance_ratios(teacher.module, images) for name, images in sources.items()}
    except (UserError, ValueError) as error:
        print(f"bn_match: error: {error}", file=sys.stderr)
        return 2
    print(table(ratios, args.layers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
