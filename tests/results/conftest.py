"""A fabricated sweep for the collector's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.results.fake_runs import fake_run


@pytest.fixture
def sweep(tmp_path) -> Path:
    """2 data sources x (W8A8 PTQ, W4A4 QAT) x 2 seeds, plus an unfinished job without metrics."""
    values = {
        ("real", 0): (90.0, 86.0),
        ("real", 1): (92.0, 88.0),
        ("bn_stats", 0): (91.0, 85.0),
        ("bn_stats", 1): (91.0, 87.0),
    }
    job = 0
    for (generator, seed), (w8a8, w4a4) in values.items():
        fake_run(tmp_path / "sweep" / str(job), generator, (8, 8), seed, w8a8)
        fake_run(tmp_path / "sweep" / str(job + 1), generator, (4, 4), seed, 80.0, qat=w4a4)
        job += 2
    (tmp_path / "sweep" / "99").mkdir()
    (tmp_path / "sweep" / "99" / "run.log").write_text("crashed")
    return tmp_path / "sweep"
