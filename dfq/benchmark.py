"""Measurement helpers for `scripts/bench_*.py`: per-step times inside real Lightning fits, timed bare
passes for comparison, peak memory, and the machine a number was measured on.

Each configuration runs in a fresh process (`run_isolated`), so that peak memory, compiled-code caches
and allocator state of one configuration never leak into the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch

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
