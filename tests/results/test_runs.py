"""Run directories -> results (dfq.results.runs): one row per protocol, every option a column."""

from __future__ import annotations

import csv

import pytest
from omegaconf import OmegaConf

from dfq.results.report import to_markdown, write_report
from dfq.results.runs import ResultsError, collect, observer_name, record_options
from dfq.results.table import aggregate, current_column, read_table
from tests.results.fake_runs import drop_column, fake_run


def test_observer_label_shows_only_the_options_the_observer_takes():
    preset = {"observer_options": {"percentile": 99.99}}  # quant=strict, with observer= overridden
    assert observer_name(OmegaConf.create(preset | {"observer": "percentile"})) == "percentile(99.99)"
    assert observer_name(OmegaConf.create(preset | {"observer": "mse"})) == "mse"


def test_different_protocols_are_not_averaged(tmp_path):
    fake_run(tmp_path / "a", "real", (8, 8), 0, 90.0)
    fake_run(tmp_path / "b", "real", (8, 8), 1, 70.0, first_last_bits=8)
    rows = aggregate(collect([tmp_path]))
    assert sorted((r["first_last_bits"], r["top1_mean"], r["seeds"]) for r in rows) == [
        ("8", 70.0, 1),
        ("same", 90.0, 1),
    ]
    assert rows[0]["top1_std"] is None


def test_per_layer_overrides_are_their_own_row_and_named(tmp_path):
    fake_run(tmp_path / "a", "real", (4, 4), 0, 90.0)
    qdrop = {"@0": {"w_bits": 8, "a_bits": 32}, "@-1": {"w_bits": 8, "a_bits": 8}}
    fake_run(tmp_path / "b", "real", (4, 4), 0, 92.0, overrides=qdrop)
    rows = aggregate(collect([tmp_path]))
    assert sorted((r["first_last_bits"], r["top1_mean"]) for r in rows) == [
        ("@0(w8,a32) @-1(w8,a8)", 92.0),
        ("same", 90.0),
    ]
    with_overrides = [row for row in rows if row["top1_mean"] == 92.0]
    assert "per-layer widths @0(w8,a32) @-1(w8,a8) (@k" in to_markdown(with_overrides)


def test_samples_synthesized_through_crops_are_their_own_row(tmp_path):
    fake_run(tmp_path / "a", "bn_stats", (4, 4), 0, 80.0)  # a run from before generator.pad_crop
    fake_run(tmp_path / "b", "bn_stats", (4, 4), 0, 81.0, pad_crop=4)
    rows = aggregate(collect([tmp_path]))
    assert [(r["pad_crop"], r["top1_mean"]) for r in rows] == [(0, 80.0), (4, 81.0)]
    assert "| bn_stats (crop 0) | 80.00 |" in to_markdown(rows)
    assert "| bn_stats (crop 4) | 81.00 |" in to_markdown(rows)


def test_a_preset_run_with_other_generator_options_is_its_own_row(tmp_path):
    fake_run(tmp_path / "old" / "0", "genie_d", (4, 4), 0, 80.0)  # the preset as it is
    path = write_report([tmp_path / "old"], tmp_path / "t")["csv"]
    fake_run(tmp_path / "new" / "0", "genie_d", (4, 4), 1, 82.0, generator_options={"swing": 1})
    fake_run(tmp_path / "new" / "1", "genie_d", (4, 4), 0, 70.0, generator_options={"swing": 0})
    rows = aggregate(collect([tmp_path / "new"]), [read_table(path)])
    assert sorted((row.get("generator.swing", "-"), row["top1_mean"]) for row in rows) == [
        ("-", pytest.approx(81.0)),  # the preset's own swing: merged with the table's row
        ("0", 70.0),
    ]
    assert "| genie_d (generator.swing 0) | 70.00 |" in to_markdown(rows)


def test_clipped_fine_tuning_is_its_own_row(tmp_path):
    fake_run(tmp_path / "a", "inception", (4, 4), 0, 86.0, qat=10.0)
    fake_run(tmp_path / "b", "inception", (4, 4), 0, 86.0, qat=87.0, grad_clip=1.0)
    rows = aggregate(collect([tmp_path]))
    assert [(r["distill.grad_clip"], r["top1_mean"]) for r in rows] == [("None", 10.0), ("1.0", 87.0)]
    assert "| inception (distill.grad_clip 1.0) |" in to_markdown(rows)


def test_a_new_step_option_is_its_own_column_and_never_averaged_with_runs_that_lack_it(tmp_path):
    fake_run(tmp_path / "a", "bn_stats", (4, 4), 0, 86.0, qat=88.0)  # a run from before the option
    fake_run(tmp_path / "b", "bn_stats", (4, 4), 1, 86.0, qat=89.0, distill_options={"sharpness": 0.5})
    rows = aggregate(collect([tmp_path]))
    tuned = [(r.get("distill.sharpness"), r["seed_list"]) for r in rows if r["steps"] != "calibrate"]
    assert tuned == [(None, "0"), ("0.5", "1")]
    path = write_report([tmp_path], tmp_path / "t")["csv"]
    with path.open(newline="") as file:
        header = next(csv.reader(file))
    assert "distill.sharpness" in header and "distill.lr" in header
    assert len(read_table(path)) == 2  # read back as two protocols


def test_runs_from_before_an_option_existed_merge_with_runs_at_its_default(tmp_path):
    fake_run(tmp_path / "a", "bn_stats", (4, 4), 0, 86.0, qat=88.0)  # recorded before the SynQ terms
    today = {"distill_weight": 1.0, "label_filter": "none", "label_threshold": 0.5, "cam_weight": 0.0,
             "low_pass": None, "hard_step": 0.0}  # fmt: skip
    fake_run(tmp_path / "b", "bn_stats", (4, 4), 1, 86.0, qat=90.0, distill_options=today)
    synq = today | {"cam_weight": 50.0}
    fake_run(tmp_path / "c", "bn_stats", (4, 4), 2, 86.0, qat=91.0, distill_options=synq)
    rows = aggregate(collect([tmp_path]))
    tuned = sorted((r["distill.cam_weight"], r["seed_list"]) for r in rows if r["steps"] != "calibrate")
    assert tuned == [("0.0", "0 1"), ("50.0", "2")]


def test_student_time_is_the_sum_of_a_sources_step_times(tmp_path):
    fake_run(tmp_path / "new" / "0", "bn_stats", (4, 4), 0, 80.0, qat=84.0)  # steps of 1 s and 9 s
    fake_run(tmp_path / "new" / "1", "bn_stats", (8, 8), 0, 90.0)
    calibrated, tuned = aggregate(collect([tmp_path / "new"]))
    assert (calibrated["student_time_s"], tuned["student_time_s"]) == (1.0, 10.0)
    assert "| 0.2 |" in to_markdown([tuned])  # minutes
    fake_run(tmp_path / "old" / "0", "bn_stats", (4, 4), 1, 80.0, qat=86.0, records=False)
    (old,) = aggregate(collect([tmp_path / "old"]))
    assert old["student_time_s"] is None and "| - |" in to_markdown([old])
    path = write_report([tmp_path / "new"], tmp_path / "t")["csv"]  # as written before the column
    drop_column(path, "student_time_s")
    fake_run(tmp_path / "more" / "0", "bn_stats", (4, 4), 2, 80.0, qat=86.0)
    merged = aggregate(collect([tmp_path / "more"]), [read_table(path)])
    assert merged[1]["seed_list"] == "0 2" and merged[1]["student_time_s"] == 10.0  # the timed run's
    assert merged[0]["student_time_s"] is None


def test_a_steps_method_is_the_column_named_after_the_step():
    records = [{"name": "reconstruct", "options": {"method": "genie", "iterations": 1000}}]
    assert record_options(records) == (("reconstruct", "genie"), ("reconstruct.iterations", "1000"))
    assert current_column("reconstruct.method") == "reconstruct"  # tables written before the rule
    assert current_column("distill.lr") == "distill.lr"


def test_compare_sources_of_one_run_become_rows(tmp_path):
    fake_run(tmp_path / "a", "bn_stats", (4, 4), 0, 80.0, compare={"real": 82.0, "gaussian": 60.0})
    rows = aggregate(collect([tmp_path]))
    assert [r["data_source"] for r in rows] == ["real", "gaussian", "bn_stats"]
    assert [r["iterations"] for r in rows] == [0, 0, 500]
    assert "; steps calibrate (calibrate.batch_size=128, " in to_markdown(rows)


def test_unreadable_run_is_named(tmp_path):
    fake_run(tmp_path / "a", "real", (8, 8), 0, 90.0)
    (tmp_path / "a" / "config.yaml").unlink()
    with pytest.raises(ResultsError, match="is not a complete dfq run"):
        collect([tmp_path])
