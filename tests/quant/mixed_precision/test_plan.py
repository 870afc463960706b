"""Choosing widths: the budget holds on the student built from them, and saved widths reproduce it."""

import pytest
import torch

from dfq.quant.mixed_precision import MixedPrecisionConfig, choose_bits, load_widths, model_size, save_widths
from dfq.quant.mixed_precision.plan import with_widths
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize
from tests.conftest import TinyBNNet

SAMPLES = torch.randn(32, 3, 8, 8)


def layer_widths(policy: QuantPolicy) -> list:
    return [policy.layer_bits(name, i, 3) for i, name in enumerate(["conv1", "conv2", "fc"])]


@pytest.mark.parametrize("kind, budget", [("avg_weight_bits", 3.0), ("weight_bytes", 600.0), ("bops", 2.6e5)])
def test_the_chosen_student_meets_the_budget_it_was_planned_for(kind, budget):
    model = TinyBNNet().eval()
    options = MixedPrecisionConfig("zeroq", [2, 4, 8], kind, budget, frontier_points=4)
    policy, report = choose_bits(model, SAMPLES, QuantPolicy(w_bits=4, a_bits=4), options)
    size = model_size(quantize(model, policy, SAMPLES[:2]), SAMPLES)
    assert size[kind] <= budget
    for measured in ("avg_weight_bits", "weight_bytes", "bops"):
        assert size[measured] == pytest.approx(report[f"planned_{measured}"])
    assert len(set(report["widths"].values())) > 1  # mixed, not one width for all
    assert [point["size"] for point in report["frontier"]] == sorted(p["size"] for p in report["frontier"])


def test_pinned_layers_keep_their_bits():
    policy = QuantPolicy(w_bits=4, a_bits=4, overrides={"@0": {"w_bits": 8}})
    options = MixedPrecisionConfig("hawq", [2, 4], budget=4.0, probes=2, frontier_points=2)
    chosen, report = choose_bits(TinyBNNet().eval(), SAMPLES, policy, options)
    assert "conv1" not in report["widths"] and layer_widths(chosen)[0].w_bits == 8


def test_saved_widths_reproduce_the_policy(tmp_path):
    model = TinyBNNet().eval()
    options = MixedPrecisionConfig("zeroq", [2, 4, 8], budget=3.5, frontier_points=2)
    policy, report = choose_bits(model, SAMPLES, QuantPolicy(), options)
    save_widths(report["widths"], tmp_path / "widths.yaml")
    saved = MixedPrecisionConfig("saved", path=str(tmp_path / "widths.yaml"))
    again, _ = choose_bits(model, SAMPLES, QuantPolicy(), saved)
    assert layer_widths(again) == layer_widths(policy)
    assert load_widths(tmp_path / "widths.yaml", ["conv1", "conv2", "fc"]) == (report["widths"], {})


def test_input_widths_are_chosen_with_the_weights_under_a_bops_budget(tmp_path):
    model = TinyBNNet().eval()
    options = MixedPrecisionConfig(
        "zeroq", [2, 4, 8], "bops", 2.0e5, frontier_points=3, activation_candidates=[2, 4, 8]
    )
    policy, report = choose_bits(model, SAMPLES, QuantPolicy(w_bits=4, a_bits=8), options)
    size = model_size(quantize(model, policy, SAMPLES[:2]), SAMPLES)
    assert size["bops"] <= 2.0e5 and size["bops"] == pytest.approx(report["planned_bops"])
    assert set(report["input_widths"]) == set(report["widths"]) == {"conv1", "conv2", "fc"}
    assert [bits.a_bits for bits in layer_widths(policy)] == [
        report["input_widths"][n] for n in ("conv1", "conv2", "fc")
    ]
    assert min(report["input_widths"].values()) < 8  # the budget cannot be met with every input at 8 bits
    save_widths(report["widths"], tmp_path / "widths.yaml", report["input_widths"])
    saved = MixedPrecisionConfig("saved", path=str(tmp_path / "widths.yaml"))
    again, reloaded = choose_bits(model, SAMPLES, QuantPolicy(w_bits=4, a_bits=8), saved)
    assert layer_widths(again) == layer_widths(policy) and reloaded["input_widths"] == report["input_widths"]


def test_bad_inputs_fail_with_a_clear_message(tmp_path):
    (tmp_path / "w.yaml").write_text("conv9: {w_bits: 3}\n")
    with pytest.raises(ValueError, match="'conv9' is not a conv/linear layer"):
        load_widths(tmp_path / "w.yaml", ["conv1"])
    with pytest.raises(ValueError, match="activation_candidates needs mixed_precision.budget_kind=bops"):
        MixedPrecisionConfig("zeroq", budget=3.0, activation_candidates=[4, 8])
    after = QuantPolicy(placement="after_activation")
    with pytest.raises(ValueError, match="needs quant.placement=layer_input, not after_activation"):
        choose_bits(
            TinyBNNet().eval(),
            SAMPLES,
            after,
            MixedPrecisionConfig("zeroq", [4], "bops", 1e9, activation_candidates=[4]),
        )
    with pytest.raises(ValueError, match="needs a budget"):
        MixedPrecisionConfig("zeroq")
    with pytest.raises(ValueError, match="method='zeroqq' is invalid"):
        MixedPrecisionConfig("zeroqq", budget=3.0)
    with pytest.raises(ValueError, match="below the cheapest"):
        choose_bits(
            TinyBNNet().eval(), SAMPLES, QuantPolicy(), MixedPrecisionConfig("zeroq", [2, 4], budget=1.5)
        )


def test_with_widths_overrides_after_the_protocol_rules():
    policy = with_widths(QuantPolicy(w_bits=4, a_bits=4, first_last_bits=8), {"fc": 3})
    assert [bits.w_bits for bits in layer_widths(policy)] == [8, 4, 3]
