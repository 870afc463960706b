"""The exact choice of one width per layer: minimise the summed sensitivity under a linear budget,
as a 0/1 integer program (HAWQ-V3's ILP, solved by scipy's HiGHS): one variable per (layer, bits),
exactly one per layer, the chosen widths' summed cost at most the budget."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

Table = dict[str, dict[Any, float]]  # layer name -> option (bits, or a (weight, input) bits pair) -> value


def cheapest(cost: Table) -> float:
    """The least summed cost any choice reaches."""
    return sum(min(options.values()) for options in cost.values())


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence the process's stdout (file descriptor 1): some HiGHS builds print
    `HighsMipSolverData::transformNewIntegerFeasibleSolution` lines from C++ even with disp off."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def solve(sensitivity: Table, cost: Table, limit: float) -> dict[str, Any]:
    """The option per layer (its bits) of least summed sensitivity whose summed cost is at most
    `limit`; ValueError when even the cheapest choice exceeds it."""
    floor = cheapest(cost)
    if floor > limit * (1 + 1e-12):
        raise ValueError(f"budget {limit:.6g} is below the cheapest choice of widths ({floor:.6g})")
    pairs = [(name, bits) for name in sensitivity for bits in sorted(sensitivity[name])]
    layers = list(sensitivity)
    one_each = np.zeros((len(layers), len(pairs)))
    for column, (name, _) in enumerate(pairs):
        one_each[layers.index(name), column] = 1.0
    costs = np.array([[cost[name][bits] for name, bits in pairs]])
    scale = max(abs(limit), 1.0)  # keep the budget row near 1 for the solver's tolerances
    with quiet_stdout():
        result = milp(
            c=np.array([sensitivity[name][bits] for name, bits in pairs]),
            constraints=[
                LinearConstraint(one_each, 1, 1),
                LinearConstraint(costs / scale, -np.inf, limit / scale + 1e-9),
            ],
            integrality=np.ones(len(pairs)),
            bounds=Bounds(0, 1),
        )
    if result.x is None:
        raise ValueError(f"no choice of widths meets budget {limit:.6g}: {result.message}")
    return {name: bits for (name, bits), x in zip(pairs, result.x, strict=True) if x > 0.5}


def total(table: Table, choice: dict[str, Any]) -> float:
    """The summed value of a choice (its sensitivity or its cost)."""
    return sum(table[name][bits] for name, bits in choice.items())
