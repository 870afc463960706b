"""BNS similarity table (docs/SIMILARITY.md): CIFAR-10 ResNet-20, one row per data set.

For each set: the BNS data-similarity score (dfq.similarity), how the teacher labels it, and the
test top-1 after W8A8 and W4A8 post-training calibration with it (dfq's strict protocol). Synthetic
sets are made at one small CPU budget and kept under outputs/synthesis/sets/ for reuse
(`generator=saved generator.path=...`); a rerun skips every set and row already done.

    python scripts/similarity_table.py [--samples 256] [--iterations 300] [--out outputs/synthesis]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from dfq.config import compose_config, validate
from dfq.data.sample_set import SampleSet
from dfq.evaluate import top1
from dfq.io import save_json
from dfq.models.load import ModelEntry
from dfq.pipeline import compress, limit, load_teacher
from dfq.record import save_grid
from dfq.samples import make_samples
from dfq.synthesis.similarity import batchnorm_similarity

REPO = Path(__file__).resolve().parents[1]
GENERATORS = ["gaussian", "inception", "bn_stats", "bn_stats_inception", "zeroq", "deepinversion"]
BITS = {"W8A8": (8, 8), "W4A8": (4, 8)}
log = logging.getLogger("similarity_table")


def compose_run(*overrides: str) -> DictConfig:
    shared = os.environ.get("DFQ_SHARED", str(REPO.parent / "shared"))
    fixed = ["model=resnet20", "dataset=cifar10_npz", "quant=strict", "logger=none"]
    return compose_config([*fixed, f"paths.shared_dir={shared}", *overrides], "outputs/synthesis")


def real_subset(teacher: ModelEntry, data: Any, split: str, count: int, seed: int = 0) -> SampleSet:
    """`count` images drawn at random (seeded) from a real split, with their true labels."""
    x, y = data.split(split, teacher.normalization).tensors
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:count]
    meta = {
        "model": teacher.name,
        "generator": f"real_{split}",
        "seed": seed,
        "normalization": dataclasses.asdict(teacher.normalization),
    }
    return SampleSet(x[pick].clone(), y[pick].clone(), meta)


def make_set(name: str, teacher: ModelEntry, data: Any, args: argparse.Namespace) -> tuple[SampleSet, float]:
    """The sample set of row `name` (loaded when saved already) and the seconds spent making it."""
    path = args.out / "sets" / f"{name}.pt"
    start = time.process_time()
    if name in ("real_train", "real_test") and path.is_file():
        return SampleSet.load(path), 0.0
    if name in ("real_train", "real_test"):
        samples = real_subset(teacher, data, name.removeprefix("real_"), args.samples)
        samples.save(path)
    else:
        overrides = [f"generator={name}", f"generator.num_samples={args.samples}"]
        if name != "gaussian":
            overrides.append(f"generator.iterations={args.iterations}")
        recipe = validate(compose_run(*overrides)).generator
        samples = make_samples(teacher, recipe, data, path, {"logger": False, "enable_progress_bar": False})
    save_grid(samples, teacher.normalization, path.with_suffix(".png"))
    return samples, time.process_time() - start


@torch.no_grad()
def teacher_labels(teacher: ModelEntry, samples: SampleSet) -> dict[str, float | None]:
    """Agreement of the teacher's argmax with the set's labels (targets or true labels), and the
    entropy (bits) of the teacher's predicted-class histogram (log2(10) = 3.32: perfectly balanced)."""
    predicted = torch.cat([teacher.module(x).argmax(1) for x in samples.x.split(256)])
    share = torch.bincount(predicted, minlength=teacher.normalization.num_classes).double() / len(predicted)
    entropy = float(-(share[share > 0] * share[share > 0].log2()).sum())
    agreement = None if samples.y is None else 100.0 * float((predicted == samples.y).double().mean())
    return {"teacher_agreement": agreement, "class_entropy_bits": entropy}


def quantization_protocols() -> dict[str, Any]:
    """The W8A8 and W4A8 configs (strict protocol, default calibration), composed once per run so a
    config file edited meanwhile cannot mix protocols within one table."""
    return {
        label: validate(compose_run(f"quant.w_bits={w}", f"quant.a_bits={a}"))
        for label, (w, a) in BITS.items()
    }


def protocol_record(protocols: dict[str, Any]) -> str:
    """The protocol as text: rows measured under another one are calibrated and evaluated again."""
    described = {
        k: [dataclasses.asdict(c.quant), dataclasses.asdict(c.calibrate)] for k, c in protocols.items()
    }
    return json.dumps(described, sort_keys=True, default=str)


def describe_set(name: str, teacher: ModelEntry, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Make (or load) the set; its similarity score and how the teacher labels it."""
    samples, seconds = make_set(name, teacher, data, args)
    score = batchnorm_similarity(teacher.module, samples.x, 256, teacher.name)
    return {
        "set": name,
        "num_samples": len(samples),
        "bns_similarity": score.mean,
        "per_layer": score.per_layer,
        "synthesis_cpu_s": round(seconds, 1),
        **teacher_labels(teacher, samples),
    }


def calibrated_accuracy(name: str, teacher: ModelEntry, test: Any, protocols: dict[str, Any], args) -> dict:
    """Test top-1 after calibrating each protocol's student on the saved set `name`."""
    samples = SampleSet.load(args.out / "sets" / f"{name}.pt")
    result: dict[str, Any] = {"protocol": protocol_record(protocols)}
    for label, config in protocols.items():
        student = compress(teacher.module, samples, config.quant, config.calibrate)
        result[label] = top1(student, test, 256)
    return result


def full_split_rows(teacher: ModelEntry, data: Any) -> dict[str, dict[str, Any]]:
    """Similarity of the whole real splits (10,000 images each): the finite-sample floor of the score."""
    rows = {}
    for split in ("train", "test"):
        x = data.split(split, teacher.normalization).tensors[0]
        score = batchnorm_similarity(teacher.module, x, 500, teacher.name)
        rows[f"real_{split}_all"] = {
            "set": f"real_{split}_all",
            "num_samples": len(x),
            "bns_similarity": score.mean,
        }
    return rows


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    def cell(value: Any, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        f"| data set | samples | BNS similarity (lower: closer) | teacher agrees with labels % | "
        f"predicted-class entropy (bits, max {math.log2(10):.2f}) | W8A8 top-1 | W4A8 top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    order = ["real_train", "real_test", *GENERATORS, "real_train_all", "real_test_all"]
    for name in sorted(results["rows"], key=lambda n: order.index(n) if n in order else len(order)):
        row = results["rows"][name]
        lines.append(
            f"| {name} | {row['num_samples']} | {cell(row['bns_similarity'], 3)} | "
            f"{cell(row.get('teacher_agreement'), 1)} | {cell(row.get('class_entropy_bits'))} | "
            f"{cell(row.get('W8A8'))} | {cell(row.get('W4A8'))} |"
        )
    lines.append(f"| full precision | - | - | - | - | {results['fp_top1']:.2f} | {results['fp_top1']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "synthesis")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-samples", type=int, default=None, help="first N test images (smoke runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("pytorch_lightning", "lightning", "lightning.pytorch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = compose_run()
    data = hydra.utils.instantiate(cfg.dataset)
    teacher = load_teacher(cfg.model, data)
    test = limit(data.split("test", teacher.normalization), args.test_samples)
    result_path = args.out / "similarity_table.json"
    results = json.loads(result_path.read_text()) if result_path.is_file() else {"rows": {}}
    results["budget"] = {"samples": args.samples, "iterations": args.iterations}
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    if "fp_top1" not in results:
        results["fp_top1"] = top1(teacher.module, test, 256)
    protocols = quantization_protocols()
    for name in ["real_train", "real_test", *GENERATORS]:
        row = results["rows"].get(name)
        if row is None:
            log.info("making and scoring %s", name)
            row = results["rows"][name] = describe_set(name, teacher, data, args)
            save_json(results, result_path)
        if row.get("protocol") != protocol_record(protocols):
            log.info("calibrating W8A8 and W4A8 students on %s", name)
            row.update(calibrated_accuracy(name, teacher, test, protocols, args))
            save_json(results, result_path)
        log.info("%s: %s", name, {k: v for k, v in row.items() if k not in ("per_layer", "protocol")})
    if "real_train_all" not in results["rows"]:
        results["rows"].update(full_split_rows(teacher, data))
        save_json(results, result_path)
    table = markdown(results, args)
    (args.out / "similarity_table.md").write_text(table + "\n")
    print(table, flush=True)


if __name__ == "__main__":
    main()
