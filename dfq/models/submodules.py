"""Replacing a module inside a network by its dotted name (torch's own `set_submodule` needs torch 2.5,
dfq supports 2.2): what quantization, BN folding, export and unit swaps all do to a model."""

from __future__ import annotations

from torch import nn


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at the dotted `name` inside `root` (e.g. `layer1.0.conv1`), in place."""
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
