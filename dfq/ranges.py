"""Valid ranges of numeric config fields, declared on each field so that one check covers them all.

A schema field made with `ranged(default, ...)` carries its `Range` in the dataclass field's metadata:
the dataclass checks itself with `check_ranges` (Python callers), and `dfq.config.validate` walks the
composed config with the same ranges before any work starts, naming the full key (`compare.real.lr`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from numbers import Real
from typing import Any

SEED_MAX = 2**32 - 1  # the largest seed NumPy and Lightning's seed_everything accept


@dataclass(frozen=True)
class Range:
    """An interval of valid numbers; `open_low`/`open_high` exclude the bound itself, `extra` lists
    values valid outside it (16/32 bits mean floating point), `text` replaces the generated wording."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    extra: tuple[float, ...] = ()
    text: str | None = None

    def __contains__(self, value: Any) -> bool:
        if not isinstance(value, Real) or isinstance(value, bool):
            return True  # a type mismatch is the schema's to report, not the range's
        if value in self.extra:
            return True
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.open_high and value == self.high))

    def describe(self) -> str:
        """The range in words, e.g. `> 0`, `in [0, 1)`."""
        if self.text:
            return self.text
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low}"
        return f"{'<' if self.open_high else '<='} {self.high}"

    def outside(self) -> float:
        """A value just outside the range (for tests and examples)."""
        if self.low is not None:
            return self.low if self.open_low else self.low - 1
        return self.high if self.open_high else self.high + 1


def ranged(default: Any, low: float | None = None, high: float | None = None, **options: Any) -> Any:
    """A dataclass field with a default and a valid `Range(low, high, **options)`."""
    return dataclasses.field(default=default, metadata={"range": Range(low, high, **options)})


def field_range(field: dataclasses.Field) -> Range | None:
    """The Range a field was declared with, if any."""
    return field.metadata.get("range")


def out_of_range(key: str, value: Any, valid: Range) -> str:
    """The one-line message for a value outside its range."""
    return f"{key}={value!r} is out of range; valid: {valid.describe()}"


def check_ranges(config: Any, prefix: str = "") -> None:
    """Raise ValueError naming the first field of dataclass `config` whose value is out of its range
    (None, the 'off' or 'all' of optional fields, is always valid)."""
    for field in dataclasses.fields(config):
        valid, value = field_range(field), getattr(config, field.name)
        if valid is not None and value is not None and value not in valid:
            raise ValueError(out_of_range(f"{prefix}.{field.name}" if prefix else field.name, value, valid))
