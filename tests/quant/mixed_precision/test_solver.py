"""The integer program against brute force, and its budget checks."""

import itertools
import os
import random

import pytest

from dfq.quant.mixed_precision import solver
from dfq.quant.mixed_precision.solver import solve, total


def brute_force(sensitivity, cost, limit):
    layers = list(sensitivity)
    feasible = []
    for widths in itertools.product(*(sorted(sensitivity[n]) for n in layers)):
        choice = dict(zip(layers, widths, strict=True))
        if total(cost, choice) <= limit:
            feasible.append((total(sensitivity, choice), choice))
    return min(feasible, key=lambda pair: pair[0])


def random_case(seed):
    rng = random.Random(seed)
    layers = [f"layer{i}" for i in range(4)]
    counts = {name: rng.randint(10, 500) for name in layers}
    sensitivity = {n: {b: rng.random() * 2.0 ** (-b) * counts[n] for b in (2, 3, 4, 8)} for n in layers}
    cost = {n: {b: counts[n] * b for b in (2, 3, 4, 8)} for n in layers}
    return sensitivity, cost, sum(counts.values())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("average_bits", [2.2, 3.0, 4.5, 6.0])
def test_solver_meets_the_budget_and_matches_brute_force(seed, average_bits):
    sensitivity, cost, weights = random_case(seed)
    limit = average_bits * weights
    widths = solve(sensitivity, cost, limit)
    assert total(cost, widths) <= limit
    best, _ = brute_force(sensitivity, cost, limit)
    assert total(sensitivity, widths) == pytest.approx(best, rel=1e-9)


def test_a_budget_below_the_cheapest_choice_is_refused():
    sensitivity, cost, weights = random_case(0)
    with pytest.raises(ValueError, match="below the cheapest"):
        solve(sensitivity, cost, 1.9 * weights)


def test_the_solvers_own_prints_are_silenced(monkeypatch, capfd):
    real_milp = solver.milp

    def chatty_milp(*args, **kwargs):  # what some HiGHS builds do from C++
        os.write(1, b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();\n")
        return real_milp(*args, **kwargs)

    monkeypatch.setattr(solver, "milp", chatty_milp)
    print("before")
    assert solve({"a": {2: 1.0, 4: 0.0}}, {"a": {2: 2.0, 4: 4.0}}, 4.0) == {"a": 4}
    print("after")
    assert capfd.readouterr().out == "before\nafter\n"
