"""Rows -> the report (dfq.results.report): the markdown tables, the CSV, the plot and the CLI."""

from __future__ import annotations

import csv

import pytest

from dfq.results.report import to_markdown, write_report
from dfq.results.runs import collect
from dfq.results.table import SUMMARY_COLUMNS, aggregate
from tests.conftest import load_script
from tests.results.fake_runs import fake_run


def test_markdown_table_rows_and_columns(sweep):
    text = to_markdown(aggregate(collect([sweep])))
    lines = text.splitlines()
    # the W4A4 PTQ column: the QAT runs' calibrated students (80.0 in every run of the fixture)
    header = lines.index("| data source | W8A8 PTQ | W4A4 PTQ | W4A4 QAT |")
    assert lines[header + 2] == "| real | 91.00 ± 1.41 | 80.00 ± 0.00 | 87.00 ± 1.41 |"
    assert lines[header + 3] == "| bn_stats | 91.00 ± 0.00 | 80.00 ± 0.00 | 86.00 ± 1.41 |"
    assert "### table: resnet20 (FP top-1 91.50 %)" in text
    assert "mean ± std over seeds (seeds per row: 2)" in text and "distill.epochs=30" in text
    assert "steps calibrate / calibrate+distill" in text
    long_header = next(line for line in lines if line.startswith("| model | FP top-1 |"))
    for column in (
        "first/last bits",
        "granularity",
        "symmetry",
        "observer",
        "steps",
        "samples",
        "iterations",
    ):
        assert f"| {column} |" in long_header
    assert "| seeds | top-1 % | wall time (s) |" in long_header


def test_report_files(sweep, tmp_path):
    paths = write_report([sweep], tmp_path / "out" / "table")
    assert {p.name for p in paths.values()} == {"table.csv", "table.md", "table.png"}
    with paths["csv"].open() as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0])[: len(SUMMARY_COLUMNS)] == SUMMARY_COLUMNS and len(rows) == 4
    assert tuple(rows[0])[len(SUMMARY_COLUMNS) :] == ("calibrate.batch_size", "calibrate.bias_correction",
        "calibrate.bn_reestimate", "calibrate.fold_bn", "calibrate.num_samples", "distill.cam_weight",
        "distill.distill_weight", "distill.epochs", "distill.grad_clip", "distill.hard_step",
        "distill.label_filter", "distill.label_threshold", "distill.low_pass", "distill.lr")  # fmt: skip
    assert rows[0]["data_source"] == "real" and float(rows[0]["top1_mean"]) == pytest.approx(91.0)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 10_000
    assert not list((tmp_path / "out").glob(".*tmp"))  # written atomically, nothing left over


def test_cli(sweep, tmp_path, capsys):
    module = load_script("collect_results")
    assert module.main([str(sweep), "--out", str(tmp_path / "r"), "--title", "Table 1"]) == 0
    assert (tmp_path / "r.md").is_file() and str(tmp_path / "r.csv") in capsys.readouterr().out
    # a table as the first root is extended in place by default
    assert module.main([str(tmp_path / "r.csv"), str(sweep)]) == 2  # the sweep's seeds are in it already
    assert "is measured twice" in capsys.readouterr().err
    assert module.main([str(tmp_path / "r.csv")]) == 0
    assert str(tmp_path / "r.md") in capsys.readouterr().out
    assert (tmp_path / "r.md").read_text().startswith("## Table 1\n")  # the heading survives extending
    assert module.main([str(tmp_path / "nothing-here")]) == 2
    assert "results folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert module.main([str(tmp_path / "empty")]) == 2


def test_a_calibration_only_run_fills_its_ptq_column_before_a_qat_run_does(tmp_path):
    fake_run(tmp_path / "a", "real", (4, 4), 0, 70.0, qat=85.0)
    fake_run(tmp_path / "b", "real", (4, 4), 1, 75.0)
    lines = to_markdown(aggregate(collect([tmp_path]))).splitlines()
    header = lines.index("| data source | W4A4 PTQ | W4A4 QAT |")
    assert lines[header + 2] == "| real | 75.00 | 85.00 |"
