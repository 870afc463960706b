"""dfq's rows beside the published methods in drops from full precision (dfq.results.published)."""

from __future__ import annotations

import pytest

from dfq.errors import UserError
from dfq.results import aggregate, collect, write_report
from dfq.results.published import drop_rows, drops_markdown
from tests.conftest import load_script
from tests.results.fake_runs import fake_run


def test_drops_are_each_methods_own_fp_minus_its_top1(tmp_path):
    for seed, (w4, w3) in enumerate(((90.0, 84.0), (90.5, 85.0))):
        fake_run(tmp_path / "runs" / f"w4_{seed}", "bn_stats_inception", (4, 4), seed, 87.0, qat=w4)
        fake_run(tmp_path / "runs" / f"w3_{seed}", "bn_stats_inception", (3, 3), seed, 60.0, qat=w3)
    entries = drop_rows(aggregate(collect([tmp_path / "runs"])), "resnet20")
    ours, synq = entries[0], entries[1]
    assert ours["method"] == "dfq, bn_stats_inception" and ours["seeds"] == {"W4A4": 2, "W3A3": 2}
    assert ours["cells"]["W4A4"][0] == pytest.approx(90.25)
    assert ours["cells"]["W4A4"][2] == pytest.approx(91.5 - 90.25)  # fake runs' FP is 91.5
    assert ours["cells"]["W3A3"][2] == pytest.approx(91.5 - 84.5)
    assert synq["cells"]["W4A4"][2] == pytest.approx(93.89 - 92.76)  # SynQ's 1.13
    table = drops_markdown(entries)
    assert "| dfq, bn_stats_inception | 91.50 | 90.25 ± 0.35 (-1.25) | 84.50 ± 0.71 (-7.00) | 2/2 |" in table
    assert "| PLF (CVPR 2024) | 94.03 | 92.47 (-1.56) | 88.04 (-5.99) | - |" in table


def test_the_script_writes_table_and_plot_and_names_an_unknown_model(tmp_path, capsys):
    fake_run(tmp_path / "runs" / "0", "bn_stats", (4, 4), 0, 87.0, qat=89.0)
    csv = write_report([tmp_path / "runs"], tmp_path / "published")["csv"]
    script = load_script("published_drops")
    assert script.main([str(csv), "--out", str(tmp_path / "drops")]) == 0
    assert "(-2.50)" in (tmp_path / "drops.md").read_text()
    assert (tmp_path / "drops.png").stat().st_size > 0
    assert script.main([str(csv), "--model", "resnet44", "--out", str(tmp_path / "x")]) == 2
    assert "no published results for model 'resnet44'; known: ['resnet20']" in capsys.readouterr().err
    with pytest.raises(UserError, match="no rows of model 'resnet20'"):
        drop_rows([{**aggregate(collect([tmp_path / "runs"]))[0], "model": "resnet56"}], "resnet20")


def test_recipes_of_one_source_keep_entries_of_their_own(tmp_path):
    """A filtered fine-tuning and a reconstructed start are other recipes than the plain QAT of the
    same samples: each is its own method, never averaged into (or overwriting) the plain row."""
    fake_run(tmp_path / "runs" / "plain", "bn_stats_inception", (3, 3), 0, 60.0, qat=83.0)
    plf = {"label_filter": "entropy"}
    fake_run(tmp_path / "runs" / "plf", "bn_stats_inception", (3, 3), 0, 60.0, qat=84.0, distill_options=plf)
    rows = aggregate(collect([tmp_path / "runs"]))
    reconstructed = {**rows[0], "steps": "calibrate+reconstruct+distill", "top1_mean": 86.0}
    entries = drop_rows([*rows, reconstructed], "resnet20")[:3]
    assert sorted(e["cells"]["W3A3"][0] for e in entries) == [83.0, 84.0, 86.0]
    assert len({e["method"] for e in entries}) == 3
    assert any(e["method"].endswith(", REC+QAT") and e["cells"]["W3A3"][0] == 86.0 for e in entries)
    assert any("label_filter entropy" in e["method"] for e in entries)
