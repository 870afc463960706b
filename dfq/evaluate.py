"""Top-1 accuracy of a model on a labelled split, and a CLI that evaluates exported quantized checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dfq.progress import Progress


@torch.no_grad()
def top1(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Percentage of samples whose highest logit is the label (model left in eval mode)."""
    model.eval()
    correct = total = 0
    loader = DataLoader(dataset, batch_size=batch_size)
    with Progress(len(loader), "evaluation") as progress:
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
            progress.update()
    return 100.0 * correct / max(total, 1)


def load_export(
    checkpoint: str | Path, model: str, dataset: str, overrides: list[str] | None = None
) -> tuple[nn.Module, Dataset]:
    """The quantized network rebuilt from an export, and the test split of a `dataset` config option.

    The float architecture comes from the `model` config option (its weights are not needed), the
    quantized weights and encodings from `checkpoint` (see dfq.quant.export).
    """
    import hydra

    from dfq.config import compose_config
    from dfq.models.load import normalization_from
    from dfq.quant.export import load_quantized

    cfg = compose_config([f"model={model}", f"dataset={dataset}", *(overrides or [])])
    normalization = normalization_from(cfg.model.input)
    network = load_quantized(hydra.utils.instantiate(cfg.model.arch), checkpoint)
    return network, hydra.utils.instantiate(cfg.dataset).split("test", normalization)


def evaluate_export(
    checkpoint: str | Path,
    model: str,
    dataset: str,
    overrides: list[str] | None = None,
    max_samples: int | None = None,
    batch_size: int = 256,
) -> tuple[float, int]:
    """Top-1 % of an exported quantized checkpoint on (the first `max_samples` of) the test split."""
    from torch.utils.data import Subset

    network, test = load_export(checkpoint, model, dataset, overrides)
    if max_samples:
        test = Subset(test, range(min(max_samples, len(test))))
    return top1(network, test, batch_size), len(test)


def main(argv: list[str] | None = None) -> None:
    """`python -m dfq.evaluate --checkpoint run/quantized/real.pt --model resnet20 --dataset cifar10_npz`."""
    import argparse
    import json
    import sys

    from dfq.errors import UserError
    from dfq.quant.export import encodings_path

    parser = argparse.ArgumentParser(description="Test accuracy of an exported quantized checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="the .pt file written by export_quantized")
    parser.add_argument("--model", help="model config option (default: the name stored in the export)")
    parser.add_argument("--dataset", help="dataset config option (default: the one stored in the export)")
    parser.add_argument("--max-samples", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. paths.shared_dir=/data")
    args = parser.parse_args(argv)
    try:
        stored = {}
        if encodings_path(args.checkpoint).is_file():
            stored = json.loads(encodings_path(args.checkpoint).read_text())
        model, dataset = args.model or stored.get("model"), args.dataset or stored.get("dataset")
        if not model or not dataset:
            raise UserError("the export names no model/dataset: pass --model and --dataset (config options)")
        accuracy, count = evaluate_export(
            args.checkpoint, model, dataset, args.overrides, args.max_samples, args.batch_size
        )
    except UserError as error:
        print(f"dfq.evaluate: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"top-1 {accuracy:.2f} % on {count} test images ({model}, {dataset}, {args.checkpoint})")


if __name__ == "__main__":
    main()
