"""SampleSet: a data set as one file (inputs in normalized space, labels, metadata), written atomically."""

from __future__ import annotations

import dataclasses
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import dfq
from dfq.errors import UserError
from dfq.io import save_torch
from dfq.models.normalization import Normalization

FORMAT = "dfq.SampleSet/1"


class SampleSetError(UserError):
    """A saved sample set is missing, damaged, or made for another model."""


@dataclass
class SampleSet:
    """Inputs (N, C, H, W) in the model's normalized space, optional labels (N,), and metadata."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    def first(self, count: int | None, key: str) -> SampleSet:
        """The first `count` samples (all when None); asking for more than the set holds is an error
        naming the config `key` that asked."""
        if count is None:
            return self
        if count > len(self):
            raise SampleSetError(f"{key}={count} exceeds the {len(self)} samples the set holds")
        return SampleSet(self.x[:count], None if self.y is None else self.y[:count], self.meta)

    def save(self, path: str | Path) -> None:
        save_torch({"format": FORMAT, "x": self.x, "y": self.y, "meta": self.meta}, path)

    @classmethod
    def load(cls, path: str | Path) -> SampleSet:
        path = Path(path)
        if not path.is_file():
            raise SampleSetError(f"sample set not found: {path}")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise SampleSetError(f"sample set {path} is damaged or truncated ({error})") from error
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise SampleSetError(f"{path} is not a dfq sample set (format {FORMAT})")
        x, y = blob["x"], blob["y"]
        if x.dim() != 4 or (y is not None and len(y) != len(x)):
            labels = None if y is None else tuple(y.shape)
            raise SampleSetError(f"sample set {path} is inconsistent: x {tuple(x.shape)}, y {labels}")
        return cls(x, y, blob["meta"])

    def check_fits(
        self, normalization: Normalization, model_name: str | None = None, source: str = ""
    ) -> None:
        """Raise SampleSetError unless the set was made for this model: image shape, normalization and
        (when given and recorded) the model's name."""
        where = source or "sample set"
        if tuple(self.x.shape[1:]) != normalization.shape:
            raise SampleSetError(
                f"{where} holds images of shape {tuple(self.x.shape[1:])} (C, H, W) but the model takes "
                f"{normalization.shape}"
            )
        recorded = self.meta.get("normalization")
        expected = dataclasses.asdict(normalization)
        if recorded is not None and _as_lists(recorded) != _as_lists(expected):
            raise SampleSetError(
                f"{where} was made with normalization {recorded}, but the model uses {expected}"
            )
        made_for = self.meta.get("model")
        if model_name is not None and made_for is not None and made_for != model_name:
            raise SampleSetError(
                f"{where} was made for model {made_for!r}, not {model_name!r}; synthesize a set for "
                f"{model_name!r} (python -m dfq.synthesize model={model_name} ...)"
            )

    @classmethod
    def concatenate(cls, parts: list[SampleSet], meta: dict[str, Any]) -> SampleSet:
        x = torch.cat([p.x for p in parts])
        labelled = all(p.y is not None for p in parts)
        y = torch.cat([p.y for p in parts]) if labelled else None
        return cls(x, y, meta)


def _as_lists(value: Any) -> Any:
    """Tuples as lists, recursively, so metadata read back from a file compares equal."""
    if isinstance(value, dict):
        return {k: _as_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def git_revision() -> str | None:
    """The source tree's git commit, when dfq runs from a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(dfq.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
