"""Results -> aggregated rows and back from CSV (dfq.results.table): mean ± std over seeds, merging
written tables with new runs, clear errors on tables dfq did not write."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from dfq.results.report import to_markdown, write_report
from dfq.results.runs import ResultsError, collect
from dfq.results.table import SUMMARY_COLUMNS, aggregate, read_table
from tests.results.fake_runs import drop_column, fake_run


def test_aggregates_over_seeds_only(sweep):
    rows = aggregate(collect([sweep]))
    assert len(rows) == 4
    assert [(r["data_source"], r["w_bits"], r["steps"]) for r in rows] == [
        ("real", 8, "calibrate"),
        ("real", 4, "calibrate+distill"),
        ("bn_stats", 8, "calibrate"),
        ("bn_stats", 4, "calibrate+distill"),
    ]
    real_w8 = rows[0]
    assert real_w8["seeds"] == 2 and real_w8["top1_mean"] == pytest.approx(91.0)
    assert real_w8["top1_std"] == pytest.approx(2**0.5)  # sample std of 90 and 92
    assert rows[1]["top1_mean"] == pytest.approx(87.0) and rows[1]["ptq_top1_mean"] == pytest.approx(80.0)
    assert rows[1]["distill.epochs"] == "30" and "distill.epochs" not in rows[0]  # from the step records
    assert rows[0]["calibrate.batch_size"] == "128"
    assert rows[2]["top1_std"] == 0.0 and rows[2]["iterations"] == 500 and rows[0]["iterations"] == 0
    assert real_w8["wall_time_s"] == pytest.approx(10.5)
    assert real_w8["observer"] == "w:minmax a:percentile(99.99)"
    assert real_w8["granularity"] == "w:per_channel a:per_tensor" and real_w8["symmetry"] == "w:asym a:asym"


def test_runs_and_tables_from_before_step_records_read_as_the_same_protocol(tmp_path):
    fake_run(tmp_path / "old" / "0", "real", (4, 4), 0, 80.0, qat=85.0, grad_clip=1.0, records=False)
    (old,) = aggregate(collect([tmp_path / "old"]))
    assert old["steps"] == "calibrate+distill" and old["options"] == (
        ("calibrate.bias_correction", "False"),
        ("calibrate.bn_reestimate", "False"),
        ("calibrate.fold_bn", "False"),
        ("distill.epochs", "30"),
        ("distill.grad_clip", "1.0"),
    )
    legacy = tmp_path / "legacy.csv"  # the same row as a table written before step records
    columns = {**{k: old[k] for k in old if k in SUMMARY_COLUMNS and k != "steps"}, "seed_list": "0"}
    columns |= {"calibration": "plain", "mode": "fine-tuned", "epochs": "30", "grad_clip": "1.0"}
    with legacy.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(columns))
        writer.writeheader()
        writer.writerow(columns)
    fake_run(tmp_path / "more" / "1", "real", (4, 4), 1, 80.0, qat=87.0, grad_clip=1.0, records=False)
    (row,) = aggregate(collect([tmp_path / "more"]), [read_table(legacy)])
    assert row["seed_list"] == "0 1" and row["top1_mean"] == pytest.approx(86.0)


def test_a_table_written_before_the_crop_column_still_extends(tmp_path):
    fake_run(tmp_path / "old" / "0", "bn_stats", (4, 4), 0, 80.0)
    path = write_report([tmp_path / "old"], tmp_path / "t")["csv"]
    drop_column(path, "pad_crop")
    fake_run(tmp_path / "new" / "0", "bn_stats", (4, 4), 1, 82.0, pad_crop=0)
    (row,) = aggregate(collect([tmp_path / "new"]), [read_table(path)])
    assert row["seed_list"] == "0 1" and row["top1_mean"] == pytest.approx(81.0)


def test_synthesis_time_is_averaged_over_the_seeds_that_record_it(tmp_path):
    for seed, seconds in ((0, 600.0), (1, 1200.0), (2, None)):  # seed 2: a set made before it was recorded
        run_dir = fake_run(tmp_path / str(seed), "bn_stats", (4, 4), seed, 80.0, qat=84.0)
        metrics_path = run_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        if seconds is not None:
            metrics["sources"]["bn_stats"]["synthesis_time_s"] = seconds
        metrics_path.write_text(json.dumps(metrics))
    (row,) = aggregate(collect([tmp_path]))
    assert row["seed_list"] == "0 1 2" and row["synthesis_time_s"] == 900.0
    assert "| 15.0 |" in to_markdown([row])  # minutes
    path = write_report([tmp_path], tmp_path / "t")["csv"]
    assert aggregate([], [read_table(path)])[0]["synthesis_time_s"] == 900.0


def test_a_written_table_extended_with_new_seeds_equals_one_collection_of_all(sweep, tmp_path):
    """Seeds 0-1 written to CSV, then merged with seeds 2-3: the same rows as aggregating all four."""
    for job, (seed, w8a8, w4a4, ptq) in enumerate([(2, 95.0, 83.0, 79.0), (3, 89.0, 90.0, 84.0)]):
        fake_run(tmp_path / "more" / str(job), "real", (8, 8), seed, w8a8)
        fake_run(tmp_path / "more" / f"q{job}", "real", (4, 4), seed, ptq, qat=w4a4)
    first = write_report([sweep], tmp_path / "first")["csv"]
    merged = aggregate(collect([tmp_path / "more"]), [read_table(first)])
    at_once = aggregate(collect([sweep, tmp_path / "more"]))
    assert len(merged) == len(at_once) == 4
    for a, b in zip(merged, at_once, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert value == (pytest.approx(b[key]) if isinstance(value, float) else b[key]), key
    real_w4 = merged[1]
    assert real_w4["seed_list"] == "0 1 2 3" and real_w4["top1_mean"] == pytest.approx(86.75)
    assert real_w4["ptq_top1_std"] == pytest.approx(statistics.stdev([80.0, 80.0, 79.0, 84.0]))
    # a report takes the table as a root and can rewrite it in place
    write_report([first, tmp_path / "more"], tmp_path / "first")
    rewritten = aggregate([], [read_table(first)])
    assert [row["seed_list"] for row in rewritten] == ["0 1 2 3", "0 1 2 3", "0 1", "0 1"]
    assert rewritten[0]["top1_std"] == pytest.approx(merged[0]["top1_std"])


def test_a_seed_merged_twice_is_an_error(sweep, tmp_path):
    table = read_table(write_report([sweep], tmp_path / "t")["csv"])
    with pytest.raises(ResultsError, match=r"seed \[0\] of table real W8A8 PTQ is measured twice"):
        aggregate(collect([sweep]), [table])


def test_a_csv_that_is_not_a_dfq_table_is_named(tmp_path):
    (tmp_path / "other.csv").write_text("model,top1\nresnet20,91.0\n")
    with pytest.raises(ResultsError, match="other.csv is not a results table written by dfq: no column"):
        read_table(tmp_path / "other.csv")
    with pytest.raises(ResultsError, match="results table not readable"):
        read_table(tmp_path / "missing.csv")


def test_a_damaged_table_is_named(sweep, tmp_path):
    path = write_report([sweep], tmp_path / "t")["csv"]
    path.write_text(path.read_text().replace(",256,", ",two hundred,", 1))
    with pytest.raises(ResultsError, match="t.csv holds a value that is not a number"):
        read_table(path)
