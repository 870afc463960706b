"""Speed switches (`conf/speed/`): memory format, `torch.compile`, static shapes, activation
checkpointing. Mixed precision is Lightning's `trainer.precision` (bf16-mixed, 16-mixed).

Each switch leaves the mathematics unchanged (up to floating-point rounding); all are off by default
and measured on and off by `scripts/bench_synthesis.py` and `scripts/bench_qat.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class SpeedConfig:
    """How the teacher (synthesis) and the student and teacher (distillation) are run.

    `compile`: `torch.compile` with `compile_backend` and `compile_mode` ("reduce-overhead" records
    CUDA graphs). `static_shapes`: compile for fixed shapes only (`dynamic=False`): one graph per
    batch shape, never a dynamic-shape one (distillation always drops a ragged last batch, and a
    synthesis set has at most two batch shapes).
    `checkpointing`: recompute the activations of each block of the teacher in the backward pass
    instead of storing them: larger synthesis batches where memory binds, at about one more forward.
    """

    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    static_shapes: bool = False
    checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"speed.compile_mode={self.compile_mode!r} is invalid; valid: {COMPILE_MODES}")
        if self.compile:  # listing backends imports dynamo: only when compiling
            backends = torch._dynamo.list_backends(exclude_tags=())
            if self.compile_backend not in backends:
                backend = self.compile_backend
                raise ValueError(f"speed.compile_backend={backend!r} is invalid; valid: {backends}")

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def to_memory_format(x: torch.Tensor, speed: SpeedConfig | None) -> torch.Tensor:
    """A 4-d batch in the configured layout (other tensors unchanged)."""
    if speed is None or x.dim() != 4:
        return x
    return x.contiguous(memory_format=speed.memory_format)


def checkpoint_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks whose activations are recomputed: the children of every top-level
    `nn.Sequential` (a ResNet's residual blocks, a MobileNet's inverted residuals), else the
    top-level children themselves."""
    names = [
        f"{name}.{child}"
        for name, module in model.named_children()
        if isinstance(module, nn.Sequential)
        for child, _ in module.named_children()
    ]
    return names or [name for name, _ in model.named_children()]


def enable_checkpointing(model: nn.Module, names: list[str] | None = None) -> nn.Module:
    """Make each named block recompute its activations in the backward pass (in place; non-reentrant
    `torch.utils.checkpoint`). Module names and hooks are unchanged."""
    for name in names if names is not None else checkpoint_blocks(model):
        block = model.get_submodule(name)
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return model


def prepare(model: nn.Module, speed: SpeedConfig | None) -> Callable[..., torch.Tensor]:
    """`model` laid out as configured, and the callable that runs it (compiled when asked for).

    The model's own weights are moved to the memory format in place; checkpointing patches its
    blocks in place, so pass a copy when the model is used elsewhere without it.
    """
    if speed is None:
        return model
    model.to(memory_format=speed.memory_format)
    if speed.checkpointing:
        enable_checkpointing(model)
    if not speed.compile:
        return model
    return torch.compile(
        model,
        backend=speed.compile_backend,
        mode=speed.compile_mode,
        dynamic=False if speed.static_shapes else None,
    )
