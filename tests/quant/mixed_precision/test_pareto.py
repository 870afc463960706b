"""The Pareto plot's points: seeds averaged per setting, mixed apart from uniform, one activation width."""

import json

import pytest

from dfq.quant.mixed_precision.pareto import measured_points, plot_frontier


def fake_run(path, w_bits, a_bits, top1, avg_bits, budget=None, steps=("calibrate",)):
    records = [{"name": name, "top1": top1} for name in steps]
    source = {"steps": records, "size": {"avg_weight_bits": avg_bits}}
    if budget is not None:
        source["mixed_precision"] = {"options": {"method": "zeroq", "budget": budget}}
    path.mkdir(parents=True)
    metrics = {"w_bits": w_bits, "a_bits": a_bits, "sources": {"bn_stats": source}}
    (path / "metrics.json").write_text(json.dumps(metrics))


def test_points_average_seeds_and_keep_mixed_apart(tmp_path):
    fake_run(tmp_path / "m0", 3, 8, 88.0, 2.99, budget=3.0)
    fake_run(tmp_path / "m1", 3, 8, 86.0, 2.97, budget=3.0)
    fake_run(tmp_path / "u0", 3, 8, 70.0, 3.0)
    fake_run(tmp_path / "u4", 3, 4, 20.0, 3.0)  # other activation width: left out
    fake_run(tmp_path / "q0", 3, 8, 80.0, 3.0, steps=("calibrate", "distill"))
    points = {p.label: p for p in measured_points([tmp_path], 8)}
    assert set(points) == {"mixed 3.0", "W3A8", "W3A8 +distill"}
    assert points["W3A8"].top1 == 70.0 and points["W3A8 +distill"].top1 == 80.0
    assert (
        points["mixed 3.0"].top1 == 87.0
        and points["mixed 3.0"].size == pytest.approx(2.98)
        and points["mixed 3.0"].mixed
    )
    assert not points["W3A8"].mixed and not points["W3A8"].later and points["W3A8 +distill"].later
    frontier = [{"size": 2.0, "sensitivity": 1.0}, {"size": 8.0, "sensitivity": 0.01}]
    plot_frontier(frontier, list(points.values()), "average weight bits", tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
