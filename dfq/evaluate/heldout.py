"""Recipes judged on held-out training images (5,000-9,999 of train_10k by default), never on the test
split: how dfq chooses a generator, reconstruction or fine-tuning recipe before any test-split run.
`scripts/heldout_recipe.py` and `scripts/heldout_steps.py` are its command lines."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from torch.utils.data import Subset

from dfq.config import RunConfig, compose_config, validate
from dfq.data.sample_set import SampleSet
from dfq.distill.distill import distill
from dfq.errors import UserError
from dfq.evaluate import top1
from dfq.models.load import ModelEntry
from dfq.pipeline import compress, evaluate_source, load_teacher, sample_path
from dfq.samples import make_samples

PTQ_BITS = ((8, 8), (6, 6), (4, 8), (4, 4))
CLIP = 1.0  # finetune.grad_clip of the clipped QAT (docs/RESULTS.md, "QAT with gradient clipping")
OPTIONS = {"logger": False, "enable_progress_bar": False, "accelerator": "cpu", "devices": 1}
Judge = Callable[[list[str], range], dict[str, Any]]


def heldout_setup(
    overrides: list[str], heldout_range: range
) -> tuple[RunConfig, ModelEntry, Subset, SampleSet, dict[str, Any]]:
    """What every held-out judgement starts from: the typed config, the teacher, the held-out training
    images, the main generator's samples (from the shared cache, or made now), and the row so far
    (the overrides and the synthesis seconds)."""
    cfg = compose_config(overrides, "outputs/heldout")
    config = validate(cfg)
    data = hydra.utils.instantiate(cfg.dataset)
    teacher = load_teacher(cfg.model, data)
    heldout = Subset(data.split("train", teacher.normalization), heldout_range)
    start = time.time()
    path = sample_path(config, teacher, config.generator, Path("outputs/heldout"))
    samples = make_samples(teacher, config.generator, data, path, OPTIONS)
    return (
        config,
        teacher,
        heldout,
        samples,
        {"overrides": overrides, "synthesis_s": round(time.time() - start)},
    )


def judge_recipe(overrides: list[str], heldout_range: range, qat: bool = True) -> dict[str, Any]:
    """One sample recipe's row: the samples' statistics, held-out top-1 after PTQ at each of
    `PTQ_BITS`, then W4A4 QAT from the calibrated student with and without gradient clipping."""
    config, teacher, heldout, samples, row = heldout_setup(overrides, heldout_range)
    with torch.no_grad():
        probability = teacher.module.eval()(samples.x).softmax(1).max(1).values.mean()
    row |= {"top_probability": round(float(probability), 4), "sample_std": round(float(samples.x.std()), 3)}
    for w_bits, a_bits in PTQ_BITS:
        policy = dataclasses.replace(config.quant, w_bits=w_bits, a_bits=a_bits)
        torch.manual_seed(0)  # observers subsample large layers at random
        student = compress(teacher.module, samples, policy, config.calibrate)
        row[f"W{w_bits}A{a_bits}"] = round(top1(student, heldout, 500), 2)
    if qat:  # `student` is the calibrated W4A4 one
        for key, clip in (("W4A4_qat", None), ("W4A4_qat_clipped", CLIP)):
            finetune = dataclasses.replace(config.finetune, enabled=True, grad_clip=clip)
            tuned = distill(copy.deepcopy(student), teacher.module, samples.x, finetune, None, OPTIONS)
            row[key] = round(top1(tuned, heldout, 500), 2)
    return row


def judge_steps(overrides: list[str], heldout_range: range) -> dict[str, Any]:
    """A run's configured student steps on its main generator's samples, each step's record scored on
    the held-out images, with the student's size and any mixed-precision choice."""
    config, teacher, heldout, samples, row = heldout_setup(
        [*overrides, "compare=none", "logger=none"], heldout_range
    )
    row["overrides"] = overrides
    result = evaluate_source(teacher, samples, config, heldout, OPTIONS)
    chosen = {"mixed_precision": result["mixed_precision"]} if "mixed_precision" in result else {}
    return row | {"steps": result["steps"], "size": result["size"]} | chosen


def heldout_parser(doc: str) -> argparse.ArgumentParser:
    """The held-out commands' shared command line: overrides, the held-out range, the JSON-lines file."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="dfq config overrides (experiment, generator, seed)")
    parser.add_argument("--heldout", default="5000:10000", help="start:stop of the training images")
    parser.add_argument("--out", type=Path, help="append the row to this JSON-lines file")
    return parser


def report(program: str, judge: Judge, args: argparse.Namespace) -> int:
    """Judge on the held-out range `args.heldout`, print the row and append it to `args.out`; the exit
    status (2 with one line on a user's mistake)."""
    start, stop = (int(v) for v in args.heldout.split(":"))
    try:
        row = judge(args.overrides, range(start, stop))
    except (UserError, ValueError, OSError) as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as out:
            out.write(json.dumps(row) + "\n")
    return 0
