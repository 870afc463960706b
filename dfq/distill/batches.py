"""Where distillation's batches come from: a batch provider (DESIGN.md), so that a fixed sample set, a
filtered view of it, or a generator network trained beside the student can feed the same loop."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

Batch = tuple[torch.Tensor, ...]  # (x,) or (x, y): normalized inputs and, where known, labels


class BatchProvider(Protocol):
    """The training batches of one distillation run: `loader` gives an iterable (a DataLoader, or any
    object with `__iter__`; not a list, which Lightning reads as several loaders) iterated once per epoch."""

    def loader(self, batch_size: int, seed: int) -> Iterable[Batch]: ...

    def steps_per_epoch(self, batch_size: int) -> int: ...


class EpochShuffle(Sampler[int]):
    """A fresh permutation each epoch, drawn from (seed, epoch) alone: a run resumed at epoch k sees
    the same order as an uninterrupted one (Lightning calls `set_epoch`)."""

    def __init__(self, count: int, seed: int) -> None:
        self.count, self.seed, self.epoch = count, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.count, generator=generator).tolist())

    def __len__(self) -> int:
        return self.count


@dataclass
class SampleBatches:
    """A fixed sample set (inputs `x`, labels `y` or None), reshuffled each epoch from (seed, epoch);
    the last short batch is dropped when the set holds more than one batch."""

    x: torch.Tensor
    y: torch.Tensor | None = None

    @property
    def tensors(self) -> Batch:
        return (self.x,) if self.y is None else (self.x, self.y)

    def loader(self, batch_size: int, seed: int) -> DataLoader:
        count = len(self.x)
        sampler = EpochShuffle(count, seed)
        return DataLoader(
            TensorDataset(*self.tensors), batch_size, sampler=sampler, drop_last=count > batch_size
        )

    def steps_per_epoch(self, batch_size: int) -> int:
        count = len(self.x)
        return count // batch_size if count > batch_size else 1

    def map(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> SampleBatches:
        """The same set, `transform` applied once to its inputs (a filtered view: SynQ's low-pass)."""
        return SampleBatches(transform(self.x), self.y)

    def split(self, fraction: float, seed: int) -> tuple[SampleBatches, SampleBatches | None]:
        """A seeded training part and a held-out part of `fraction` of the samples (None when 0)."""
        count = len(self.x)
        held = math.floor(count * fraction)
        if held == 0:
            return self, None
        if held >= count:
            raise ValueError(f"finetune.holdout={fraction} leaves no training sample out of {count}")
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
        train, holdout = order[held:], order[:held]
        part = [SampleBatches(*(t[index] for t in self.tensors)) for index in (train, holdout)]
        return part[0], part[1]
