"""The results collector on fabricated run directories: rows, columns, mean ± std, protocol columns,
the CSV, the markdown table and the plot."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dfq.results import (
    SUMMARY_COLUMNS,
    ResultsError,
    aggregate,
    collect,
    current_column,
    observer_name,
    read_table,
    record_options,
    to_markdown,
    write_report,
)
from tests.conftest import load_script

CALIBRATION = {"num_samples": None, "batch_size": 128, "fold_bn": False, "bn_reestimate": False,
               "bias_correction": False}  # fmt: skip


def fake_run(
    run_dir: Path,
    generator: str,
    bits: tuple[int, int],
    seed: int,
    ptq: float,
    qat: float | None = None,
    first_last_bits: int | None = None,
    compare: dict[str, float] | None = None,
    pad_crop: int | None = None,
    grad_clip: float | None = None,
    records: bool = True,
    distill_options: dict | None = None,
    overrides: dict | None = None,
    generator_options: dict | None = None,
) -> Path:
    """A run directory as dfq.record writes it: metrics.json (with step records, unless `records` is
    False: a run from before them) and the resolved config.yaml."""
    iterations = {"real": 0, "gaussian": 0}.get(generator, 500)
    # an older record may hold the step's seed: the collector leaves it out, so seeds still aggregate
    tuning = {"epochs": 30, "lr": 0.005, "grad_clip": grad_clip, "seed": seed} | (distill_options or {})

    def source(ptq: float, qat: float | None) -> dict:
        steps = [{"name": "calibrate", "options": CALIBRATION, "top1": ptq, "wall_time_s": 1.0}]
        steps += [{"name": "distill", "options": tuning, "top1": qat, "wall_time_s": 9.0}] if qat else []
        accuracy = {"ptq_top1": ptq} | ({"qat_top1": qat} if qat is not None else {})
        return accuracy | ({"steps": steps} if records else {})

    sources = {generator: source(ptq, qat)}
    sources |= {name: source(value, None) for name, value in (compare or {}).items()}
    metrics = {
        "model": "resnet20",
        "generator": generator,
        "protocol": "strict",
        "w_bits": bits[0],
        "a_bits": bits[1],
        "num_samples": 256,
        "test_samples": 1000,
        "fp_top1": 91.5,
        "q_top1": qat if qat is not None else ptq,
        "sources": sources,
        "seed": seed,
        "wall_time_s": 10.0 + seed,
    }
    quantizer = {
        "granularity": "per_channel",
        "symmetric": False,
        "observer": "minmax",
        "observer_options": {},
    }
    config = {
        "experiment": "table",
        "task_name": "table",
        "seed": seed,
        "generator": {"name": generator, "source": "synthesis", "num_samples": 256, "iterations": iterations}
        | ({} if pad_crop is None else {"pad_crop": pad_crop})
        | (generator_options or {}),
        "compare": {
            name: {"name": name, "source": "real", "num_samples": 256, "iterations": 0}
            for name in compare or {}
        },
        "quant": {
            "protocol": "strict",
            "w_bits": bits[0],
            "a_bits": bits[1],
            "placement": "layer_input",
            "first_last_bits": first_last_bits,
            "overrides": overrides,
            "weight": quantizer,
            "activation": quantizer
            | {
                "granularity": "per_tensor",
                "observer": "percentile",
                "observer_options": {"percentile": 99.99},
            },
        },
        "calibrate": {"num_samples": None, "batch_size": 128},
        "finetune": {
            "enabled": qat is not None,
            "epochs": 30 if qat is not None else 0,
            "grad_clip": grad_clip,
        },
    }
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    return run_dir


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


def drop_column(path: Path, name: str) -> None:
    """Rewrite the CSV at `path` without column `name`: a table written before the column existed."""
    with path.open(newline="") as file:
        rows = [{k: v for k, v in row.items() if k != name} for row in csv.DictReader(file)]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_a_table_written_before_the_crop_column_still_extends(tmp_path):
    fake_run(tmp_path / "old" / "0", "bn_stats", (4, 4), 0, 80.0)
    path = write_report([tmp_path / "old"], tmp_path / "t")["csv"]
    drop_column(path, "pad_crop")
    fake_run(tmp_path / "new" / "0", "bn_stats", (4, 4), 1, 82.0, pad_crop=0)
    (row,) = aggregate(collect([tmp_path / "new"]), [read_table(path)])
    assert row["seed_list"] == "0 1" and row["top1_mean"] == pytest.approx(81.0)


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


def test_unreadable_run_is_named(tmp_path):
    fake_run(tmp_path / "a", "real", (8, 8), 0, 90.0)
    (tmp_path / "a" / "config.yaml").unlink()
    with pytest.raises(ResultsError, match="is not a complete dfq run"):
        collect([tmp_path])


def test_a_calibration_only_run_fills_its_ptq_column_before_a_qat_run_does(tmp_path):
    fake_run(tmp_path / "a", "real", (4, 4), 0, 70.0, qat=85.0)
    fake_run(tmp_path / "b", "real", (4, 4), 1, 75.0)
    lines = to_markdown(aggregate(collect([tmp_path]))).splitlines()
    header = lines.index("| data source | W4A4 PTQ | W4A4 QAT |")
    assert lines[header + 2] == "| real | 75.00 | 85.00 |"


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
