"""Measurement helpers for `scripts/bench_*.py`: per-step times inside real Lightning fits, timed bare
passes for comparison, peak memory, and the machine a number was measured on.

Each configuration runs in a fresh process (`run_isolated`), so that peak memory, compiled-code caches
and allocator state of one configuration never leak into the next.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torchvision
from torch import nn

from dfq.io import atomic_path, save_json
from dfq.models.cifar_resnet import cifar_resnet
from dfq.models.normalization import Normalization

# The subjects of the benchmarks: random-weight models (speed does not depend on the weights)
CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1000)
MODELS = {  # name -> (constructor, normalization constants)
    "resnet20": (lambda: cifar_resnet(20), CIFAR),
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), IMAGENET),
    "resnet50": (lambda: torchvision.models.resnet50(weights=None), IMAGENET),
}
VARIANTS = {  # name -> (speed switches, Lightning precision)
    "fp32": ({}, "32-true"),
    "channels_last": ({"channels_last": True}, "32-true"),
    "bf16": ({}, "bf16-mixed"),
    "compile": ({"compile": True}, "32-true"),
    "compile+static": ({"compile": True, "static_shapes": True}, "32-true"),
    "checkpointing": ({"checkpointing": True}, "32-true"),
    "bf16+cl+compile": ({"channels_last": True, "compile": True, "static_shapes": True}, "bf16-mixed"),
}


def build(name: str, resolution: int) -> tuple[nn.Module, Normalization]:
    """Model `name` (random weights, eval mode) and its input normalization at `resolution`."""
    make, (mean, std, classes) = MODELS[name]
    return make().eval(), Normalization(mean, std, resolution, classes)


PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (timing on an accelerator); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(pl.Callback):
    """Wall time at the end of every training step; `median` gives the typical step after warm-up."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        synchronize(module.device)
        self.stamps.append(time.perf_counter())

    def median(self, warmup: int) -> float:
        """Median seconds between consecutive steps, the first `warmup` steps left out."""
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)][warmup:]
        if not gaps:
            raise ValueError(f"{len(self.stamps)} steps timed; need more than warmup={warmup} + 1")
        return statistics.median(gaps)


def time_calls(fn: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds of one `fn()` call over `steps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context Lightning's `precision` setting opens around a training step."""
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def resident_bytes() -> int:
    """This process's resident memory now (Linux), in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak memory used by the enclosed work, in MiB, above what was in use before it.

    GPU: the caching allocator's peak of allocated tensors. CPU: the growth of the process's
    resident high-water mark, so it is meaningful only for the first measurement in a process.
    """
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        return
    before = resident_bytes()
    yield result
    high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result["peak_mib"] = max(0, high_water - before) / 2**20


@contextlib.contextmanager
def saved_for_backward() -> Iterator[dict[str, float]]:
    """MiB of distinct tensor storage autograd saves for the backward pass of the enclosed forward:
    the activation memory a step holds, on any device (what checkpointing trades for recomputation).
    Tensors saved inside a checkpointed region are not kept, and not counted."""
    storages: dict[int, int] = {}
    result: dict[str, float] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield result
    result["saved_mib"] = sum(storages.values()) / 2**20


def machine(device: torch.device) -> str:
    """One line naming the hardware and software a measurement ran on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        cpu = names[0] if names else cpu
    where = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}; host {where}"
    return f"{where}; torch {torch.__version__}"


def run_isolated(script: str, config: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run `script --one '<config json>'` in a fresh interpreter and return the JSON it prints last."""
    command = [sys.executable, script, "--one", json.dumps(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {**config, "error": " | ".join(tail) or f"exit status {done.returncode}"}
    return json.loads(lines[-1])


def markdown_table(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    """Rows as a markdown table; `columns` maps each key to its header. Floats get 2-3 significant places."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        return "-" if value is None else str(value)

    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key)) for key in columns) + " |" for row in rows]
    return "\n".join(lines)


def parse_case(text: str, models: Collection[str]) -> dict[str, Any]:
    """`resnet18@224x16` -> model resnet18, resolution 224, batch 16."""
    try:
        model, rest = text.split("@")
        resolution, batch = (int(v) for v in rest.split("x"))
    except ValueError:
        raise SystemExit(f"--cases {text!r}: expected MODEL@RESOLUTIONxBATCH, e.g. resnet18@224x16") from None
    if model not in models:
        raise SystemExit(f"--cases {text!r}: unknown model {model!r}; valid: {sorted(models)}")
    return {"model": model, "resolution": resolution, "batch": batch}


def report(rows: list[dict[str, Any]], out: Path | None, columns: dict[str, str]) -> None:
    """Print the markdown table (and the machine); with `out`, write it and the raw rows."""
    good = [r for r in rows if "error" not in r]
    text = markdown_table(good, columns)
    text += "".join(f"\n\nfailed: {r['model']}@{r['resolution']} {r['variant']}: {r['error']}" for r in rows
                    if "error" in r)  # fmt: skip
    if good:
        text += f"\n\nmachine: {good[0]['machine']}"
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_json(rows, out.with_suffix(".json"))
        with atomic_path(out.with_suffix(".md")) as tmp:
            tmp.write_text(text + "\n")


def command_line(
    script: str,
    doc: str,
    measure: Callable[[dict[str, Any]], dict[str, Any]],
    columns: dict[str, str],
    models: Collection[str],
    variants: Collection[str],
    default_case: str,
) -> None:
    """The shared command line of the bench scripts: every case x variant measured by `measure` in a
    fresh process (`--one`), then one table."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=[default_case], help="MODEL@RESOLUTIONxBATCH")
    parser.add_argument("--variants", nargs="+", default=["fp32"], choices=sorted(variants))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single measurement, run by run_isolated
    args = parser.parse_args()
    if args.one:
        case = json.loads(args.one)
        if case.get("threads"):
            torch.set_num_threads(case["threads"])
        print(json.dumps(measure(case)), flush=True)
        return
    rows = []
    for text in args.cases:
        for variant in args.variants:
            case = {**parse_case(text, models), "variant": variant, "device": args.device,
                    "steps": args.steps, "warmup": args.warmup, "threads": args.threads}  # fmt: skip
            rows.append(run_isolated(script, case))
            print(json.dumps(rows[-1]), flush=True)
    report(rows, args.out, columns)
