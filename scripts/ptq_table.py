"""PTQ accuracy table: CIFAR-10 ResNet-20, real calibration images, bit widths x activation observers.

Strict protocol (dfq's `quant=strict`): the input and the weight of every Conv2d/Linear quantized (the
network input and the classifier input included); weights per-output-channel asymmetric min-max;
activations per-tensor asymmetric with the observer under test. Calibration images are drawn from
train_10k.npz with the same seeded draw as `generator=real`; accuracy is on the test split.

    python scripts/ptq_table.py --out outputs/quant/ptq_table
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from dfq.data.npz import NpzDataset
from dfq.evaluate import top1
from dfq.io import atomic_path, save_json
from dfq.models.cifar_resnet import cifar_resnet
from dfq.models.load import freeze, load_weights, read_state_dict
from dfq.models.normalization import Normalization
from dfq.quant.calibrate import calibrate
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize
from dfq.quant.quantizer import QuantSpec

CIFAR = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), image_size=32, num_classes=10)
BITS = ((8, 8), (6, 6), (4, 8), (4, 4))
OBSERVERS = {
    "minmax": {},
    "ema_minmax": {"momentum": 0.9},
    "percentile": {"percentile": 99.99},
    "mse": {},
    "aciq": {"distribution": "laplace"},
}
# Extra W4A4 rows: the calibration options on top of the percentile observer.
EXTRAS = {
    "percentile + bias correction": {"bias_correction": True},
    "percentile + BN re-estimation": {"bn_reestimate": True},
    "percentile + residual adds quantized": {"quantize_residual": True},
    "percentile, weights with real-valued offset": {"integer_zero_point": False},
}


def policy(w_bits: int, a_bits: int, observer: str, options: dict) -> QuantPolicy:
    """dfq's strict protocol at the given widths, `observer` on the activations, an extra row's options."""
    weight = QuantSpec(
        granularity="per_channel",
        observer="minmax",
        dynamic=True,
        integer_zero_point=options.get("integer_zero_point", True),
    )
    return QuantPolicy(
        w_bits=w_bits,
        a_bits=a_bits,
        weight=weight,
        activation=QuantSpec(observer=observer, observer_options=OBSERVERS[observer]),
        quantize_residual=options.get("quantize_residual", False),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-dir", default="../shared")
    parser.add_argument("--out", default="outputs/quant/ptq_table")
    parser.add_argument("--calibration-samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-test", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bits", nargs="*", default=[f"W{w}A{a}" for w, a in BITS], help="e.g. W4A4 W6A6")
    parser.add_argument("--observers", nargs="*", default=list(OBSERVERS), choices=list(OBSERVERS))
    parser.add_argument("--extras", nargs="*", default=list(EXTRAS), help="W4A4 rows with extra options")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shared = Path(args.shared_dir)
    model = cifar_resnet(20)
    load_weights(model, read_state_dict(shared / "models/cifar10/resnet20-12fca82f.th"), "resnet20")
    freeze(model)
    data = NpzDataset(
        train=str(shared / "data/cifar10/train_10k.npz"), test=str(shared / "data/cifar10/test.npz")
    )
    x = data.split("train", CIFAR).tensors[0]
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[
        : args.calibration_samples
    ]
    calibration = x[pick].clone()
    test = data.split("test", CIFAR)
    if args.max_test:
        test = Subset(test, range(min(args.max_test, len(test))))
    rows = []
    out = Path(args.out)
    start = time.time()
    fp = top1(model, test)
    print(f"FP {fp:.2f}", flush=True)
    jobs = [(w, a, name, {}) for w, a in BITS for name in args.observers if f"W{w}A{a}" in args.bits]
    jobs += [(4, 4, label, options) for label, options in EXTRAS.items() if label in args.extras]
    for w_bits, a_bits, label, options in jobs:
        tick = time.time()
        observer = "percentile" if options else label  # every extra row builds on the percentile row
        student = quantize(model, policy(w_bits, a_bits, observer, options), x[:2])
        calibrate(
            student,
            calibration,
            bn_reestimate=options.get("bn_reestimate", False),
            bias_correction=options.get("bias_correction", False),
        )
        accuracy = top1(student, test)
        rows.append({"bits": f"W{w_bits}A{a_bits}", "observer": label, "top1": round(accuracy, 2),
                     "seconds": round(time.time() - tick, 1)})  # fmt: skip
        print(f"W{w_bits}A{a_bits} {label:<40} {accuracy:6.2f}  ({time.time() - tick:.0f} s)", flush=True)
        write(out, fp, rows, args, len(test), time.time() - start)


def write(
    out: Path, fp: float, rows: list[dict], args: argparse.Namespace, test_size: int, seconds: float
) -> None:
    """Results as JSON and as a markdown table (observers as rows, bit widths as columns)."""
    meta = {
        "fp_top1": round(fp, 2),
        "test_images": test_size,
        "calibration_images": args.calibration_samples,
        "seed": args.seed,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "total_seconds": round(seconds, 1),
    }
    save_json({"meta": meta, "rows": rows}, out.with_suffix(".json"))
    columns = [f"W{w}A{a}" for w, a in BITS]
    table = {(r["observer"], r["bits"]): r["top1"] for r in rows}
    labels = list(dict.fromkeys(r["observer"] for r in rows))
    lines = ["| activation observer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label in labels:
        cells = [f"{table[(label, c)]:.2f}" if (label, c) in table else "" for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"\nFP top-1 {fp:.2f} on {test_size} test images; {json.dumps(meta)}")
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
