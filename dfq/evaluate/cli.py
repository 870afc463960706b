"""`python -m dfq.evaluate` / `dfq-evaluate`: the test accuracy of an exported quantized checkpoint."""

from __future__ import annotations

import argparse
import json
import sys

from dfq.errors import UserError
from dfq.evaluate import evaluate_export
from dfq.quant.export import encodings_path


def main(argv: list[str] | None = None) -> None:
    """`python -m dfq.evaluate --checkpoint run/quantized/real.pt --model resnet20 --dataset cifar10_npz`."""
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
