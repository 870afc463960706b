"""Block reconstruction: AdaRound's rounding, the unit loop (BRECQ, QDrop), block discovery, resuming,
and the exports of a reconstructed student."""

from __future__ import annotations

import copy
import os
import signal
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import dfq.quant.reconstruct as reconstruct_module
from dfq.faults import InterruptedRun
from dfq.models.cifar_resnet import cifar_resnet
from dfq.quant.blocks import find_units
from dfq.quant.calibrate import calibrate
from dfq.quant.export import export_quantized, load_quantized
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize
from dfq.quant.quantizer import QuantSpec
from dfq.quant.reconstruct import (
    ReconstructConfig,
    capture,
    reconstruct,
    reconstruction_error,
    with_copies,
)
from dfq.quant.rounding import AdaRound, annealed_beta, rectified_sigmoid
from dfq.speed import SpeedConfig

FAST = {"iterations": 60, "batch_size": 16, "method": "brecq"}


def calibrated(model: nn.Module, x: torch.Tensor, policy: QuantPolicy | None = None) -> nn.Module:
    return calibrate(quantize(model, policy or QuantPolicy(w_bits=4, a_bits=4), x[:2]), x)


def weight_codes(layer: nn.Module) -> torch.Tensor:
    """A layer's weights on its quantizer's grid (integers where they lie on the grid)."""
    quantizer = layer.weight_quantizer
    zero_point = quantizer.broadcast(quantizer.zero_point, layer.weight)
    fraction = zero_point - torch.round(zero_point)
    return layer.weight / quantizer.broadcast(quantizer.scale, layer.weight) + fraction


def test_adaround_starts_at_the_weights_and_hardens_to_floor_or_ceil():
    position = torch.tensor([0.2, 1.7, -0.5, 3.0001])
    rounding = AdaRound(position)
    assert torch.allclose(rounding.codes(), position, atol=1e-3)  # soft, it starts where the weights are
    rounding.harden()
    assert torch.equal(rounding.codes(), torch.tensor([0.0, 2.0, 0.0, 3.0]))  # nearest, for now
    assert rectified_sigmoid(torch.tensor([-50.0, 50.0])).tolist() == [0.0, 1.0]  # reaches 0 and 1


def test_the_regularizer_drives_the_soft_rounding_to_zero_or_one():
    rounding = AdaRound(torch.rand(200) * 4)
    optimizer = torch.optim.Adam([rounding.variable], lr=0.05)
    start = rounding.regularizer(2.0).item()
    for _ in range(300):
        optimizer.zero_grad()
        rounding.regularizer(2.0).backward()
        optimizer.step()
    offsets = rounding.offset()
    assert rounding.regularizer(2.0).item() < 0.01 * start
    assert ((offsets < 1e-3) | (offsets > 1 - 1e-3)).all()


def test_the_output_error_sums_channels_and_weights_by_the_fisher_term():
    output, target = torch.zeros(2, 3, 1, 1), torch.ones(2, 3, 1, 1)
    weight = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1).expand(2, 3, 1, 1)
    assert reconstruction_error(output, target, None).item() == 3.0  # 3 channels of error 1, averaged
    assert reconstruction_error(output, target, weight).item() == 6.0


def test_fisher_weights_are_squared_gradients_at_the_unit_output(tiny_entry):
    x = torch.randn(16, 3, 8, 8)
    student = calibrated(tiny_entry.module, x)
    weights = reconstruct_module.output_gradients(student, tiny_entry.module, "conv2", x)
    assert weights.shape == capture(tiny_entry.module, "conv2", x, output=True).shape
    assert (weights >= 0).all() and weights.sum() > 0
    assert all(p.grad is None for p in student.parameters())  # nothing left behind for the next step


def test_beta_is_held_through_the_warmup_then_annealed_to_its_end():
    assert annealed_beta(0, 100, 0.2, 20, 2) == annealed_beta(19, 100, 0.2, 20, 2) == 20
    assert annealed_beta(60, 100, 0.2, 20, 2) == pytest.approx(11.0)
    assert annealed_beta(100, 100, 0.2, 20, 2) == pytest.approx(2.0)


def test_reconstruction_lowers_a_units_error_and_leaves_weights_on_the_grid(tiny_entry):
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    student = calibrated(tiny_entry.module, x)
    before = {name: copy.deepcopy(student.get_submodule(name)) for name in ("conv1", "conv2", "fc")}

    def unit_error(model: nn.Module, name: str) -> float:
        inputs = capture(model, name, x, output=False)
        target = capture(tiny_entry.module, name, x, output=True)
        with torch.no_grad():
            return float(reconstruction_error(model.get_submodule(name)(inputs), target, None))

    errors_before = [unit_error(student, "conv2")]
    options = ReconstructConfig(**FAST | {"iterations": 300})
    student, losses = reconstruct(student, tiny_entry.module, x, options)
    assert [loss["unit"] for loss in losses] == ["conv1", "conv2", "fc"]  # no blocks: every layer alone
    assert all(loss["error_reconstructed"] < loss["error_calibrated"] for loss in losses[:2])
    step = student.conv2.input_quantizer
    assert not torch.equal(step.scale, before["conv2"].input_quantizer.scale)  # activation steps learned
    assert not isinstance(step.scale, nn.Parameter) and step.step_gradient_scale  # fixed again
    assert unit_error(student, "conv2") < 0.95 * errors_before[0]
    for name, layer in before.items():
        codes = weight_codes(student.get_submodule(name))
        assert torch.allclose(codes, codes.round(), atol=1e-3), name  # exactly on the grid
        nearest = weight_codes(layer).round()  # calibration's grid: a rounding step of the old range
        assert student.get_submodule(name).weight_quantizer.spec.dynamic is False
        assert codes.shape == nearest.shape


def test_hardened_codes_are_within_one_step_of_nearest_on_the_same_grid(tiny_entry):
    """AdaRound only chooses between floor and ceil: on the grid it reconstructed with, every hardened
    code differs from the nearest rounding of the float weight by at most one step."""
    torch.manual_seed(0)
    x = torch.randn(32, 3, 8, 8)
    float_weight = tiny_entry.module.conv2.weight.detach().clone()
    student, _ = reconstruct(
        calibrated(tiny_entry.module, x), tiny_entry.module, x, ReconstructConfig(**FAST)
    )
    layer = student.conv2
    quantizer = layer.weight_quantizer
    zero_point = quantizer.broadcast(quantizer.zero_point, float_weight)
    fraction = zero_point - torch.round(zero_point)
    float_codes = float_weight / quantizer.broadcast(quantizer.scale, float_weight) + fraction
    low, high = quantizer.qmin - (zero_point - fraction), quantizer.qmax - (zero_point - fraction)
    difference = weight_codes(layer).round() - torch.clamp(float_codes.round(), low, high)
    assert difference.abs().max() <= 1


def spy_on_training(monkeypatch: pytest.MonkeyPatch, seen: Callable[[Any, Any], Any]) -> None:
    """Call `seen(state, data)` with what each unit is trained on, then train it as usual."""
    real_train = reconstruct_module.train_unit
    monkeypatch.setattr(
        reconstruct_module,
        "train_unit",
        lambda unit, state, data, *a: seen(state, data) or real_train(unit, state, data, *a),
    )


def test_p_zero_is_brecq_no_float_inputs_and_no_dropped_activations(tiny_entry, monkeypatch):
    x = torch.randn(32, 3, 8, 8)
    outputs_of = []
    real_capture = reconstruct_module.capture
    monkeypatch.setattr(
        reconstruct_module,
        "capture",
        lambda model, name, x, output, **k: (
            outputs_of.append((model, output)) or real_capture(model, name, x, output)
        ),
    )
    student = calibrated(tiny_entry.module, x)
    drops = []
    spy_on_training(
        monkeypatch,
        lambda state, data: drops.append(
            (data.float_inputs, [q.drop_probability for q in state.activations])
        ),
    )
    reconstruct(student, tiny_entry.module, x, ReconstructConfig(**FAST | {"drop_probability": 0.0}))
    assert all(float_inputs is None and set(p) <= {0.0} for float_inputs, p in drops)
    assert [output for model, output in outputs_of if model is tiny_entry.module] == [
        True
    ] * 3  # targets only
    drops.clear()
    reconstruct(
        calibrated(tiny_entry.module, x),
        tiny_entry.module,
        x,
        ReconstructConfig(**FAST | {"drop_probability": 0.5}),
    )
    assert all(float_inputs is not None and set(p) == {0.5} for float_inputs, p in drops)
    assert all(q.drop_probability == 0.0 for q in student.modules() if hasattr(q, "drop_probability"))


def crops_and_flips(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every crop of `image` zero-padded by `padding`, and the mirror of each."""
    height, width = image.shape[-2:]
    framed = torch.nn.functional.pad(image, [padding] * 4)
    crops = [
        framed[:, dy : dy + height, dx : dx + width]
        for dy in range(2 * padding + 1)
        for dx in range(2 * padding + 1)
    ]
    return crops + [crop.flip(2) for crop in crops]


def test_copies_follow_the_samples_as_seeded_crops_and_flips_of_them():
    x = torch.randn(6, 3, 5, 5)
    options = ReconstructConfig(copies=2, copy_padding=1, seed=3)
    widened = with_copies(x, options)
    assert widened.shape == (18, 3, 5, 5) and torch.equal(widened[:6], x)
    for index, copy_ in enumerate(widened[6:]):
        assert any(torch.equal(copy_, view) for view in crops_and_flips(x[index % 6], 1))
    assert not torch.equal(widened[6:12], widened[12:])  # each copy drawn on its own
    assert torch.equal(with_copies(x, options), widened)  # the same set when a run resumes
    assert with_copies(x, ReconstructConfig()) is x
    with pytest.raises(ValueError, match=r"reconstruct.copies=1 needs image samples"):
        with_copies(torch.randn(4, 7), ReconstructConfig(copies=1))


def test_units_are_trained_on_the_samples_and_their_copies(tiny_entry, monkeypatch):
    x = torch.randn(16, 3, 8, 8)
    sizes = []
    spy_on_training(monkeypatch, lambda state, data: sizes.append(len(data.inputs)))
    options = ReconstructConfig(**FAST | {"iterations": 5, "copies": 3})
    reconstruct(calibrated(tiny_entry.module, x), tiny_entry.module, x, options)
    assert sizes == [64, 64, 64]


def test_quantizer_drop_passes_about_p_of_the_elements_unquantized():
    from dfq.quant.quantizer import Quantizer

    quantizer = Quantizer(QuantSpec(bits=2))
    quantizer.observing = True
    x = torch.randn(10_000) * 3
    quantizer(x)
    quantizer.observing = False
    quantizer.freeze()
    quantizer.drop_probability = 0.3
    passed = (quantizer(x) == x).float().mean().item()
    assert 0.27 < passed < 0.33


def test_blocks_are_found_by_type_and_other_layers_are_units_of_their_own():
    x = torch.randn(2, 3, 32, 32)
    resnet = find_units(cifar_resnet(20).eval(), x)
    assert [u.name for u in resnet][:3] == ["conv1", "layer1.0", "layer1.1"] and resnet[-1].name == "linear"
    assert sum(u.kind == "block" for u in resnet) == 9
    resnet18 = find_units(torchvision.models.resnet18().eval(), torch.randn(1, 3, 64, 64))
    assert [u.kind for u in resnet18] == ["layer"] + ["block"] * 8 + ["layer"]
    mobilenet = find_units(torchvision.models.mobilenet_v2().eval(), torch.randn(1, 3, 64, 64))
    assert sum(u.kind == "block" for u in mobilenet) == 17
    assert mobilenet[0].name == "features.0.0" and mobilenet[-1].name == "classifier.1"
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    assert [(u.name, u.kind) for u in find_units(plain, x)] == [("0", "layer"), ("3", "layer")]


def test_an_interrupted_reconstruction_resumes_to_the_same_student(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = cifar_resnet(8).eval()
    x = torch.randn(32, 3, 32, 32)
    options = ReconstructConfig(**FAST | {"iterations": 20, "drop_probability": 0.5})
    whole, _ = reconstruct(calibrated(model, x), model, x, options)
    real_unit = reconstruct_module.reconstruct_unit
    calls = []

    def stop_at_third(*args):
        calls.append(args[3].name)
        if len(calls) == 3:
            raise InterruptedRun("stopped")
        return real_unit(*args)

    monkeypatch.setattr(reconstruct_module, "reconstruct_unit", stop_at_third)
    with pytest.raises(InterruptedRun):
        reconstruct(calibrated(model, x), model, x, options, tmp_path)
    monkeypatch.setattr(reconstruct_module, "reconstruct_unit", real_unit)
    resumed, losses = reconstruct(calibrated(model, x), model, x, options, tmp_path)
    assert len(losses) == 5  # conv1, three blocks, fc; the first two came from the saved state
    expected, got = whole.state_dict(), resumed.state_dict()
    assert set(expected) == set(got)
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name


def test_channels_last_reconstructs_the_same_student_in_that_layout():
    torch.manual_seed(0)
    model = cifar_resnet(8).eval()
    x = torch.randn(32, 3, 32, 32)
    options = ReconstructConfig(**FAST | {"iterations": 20})
    plain, _ = reconstruct(calibrated(model, x), model, x, options)
    reference = copy.deepcopy(model)
    fast, _ = reconstruct(
        calibrated(reference, x), reference, x, options, speed=SpeedConfig(channels_last=True)
    )
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_sigterm_stops_the_loop_with_the_finished_units_saved(tiny_entry, tmp_path, monkeypatch):
    x = torch.randn(32, 3, 8, 8)
    options = ReconstructConfig(**FAST | {"iterations": 10})
    updates = []

    class SignalledProgress(reconstruct_module.Progress):
        def update(self, count: int = 1, **values: float) -> None:
            updates.append(1)
            if len(updates) == 15:  # the fifth iteration of the second unit
                os.kill(os.getpid(), signal.SIGTERM)
            super().update(count, **values)

    monkeypatch.setattr(reconstruct_module, "Progress", SignalledProgress)
    with pytest.raises(InterruptedRun, match="interrupted; rerun the same command to resume"):
        reconstruct(calibrated(tiny_entry.module, x), tiny_entry.module, x, options, tmp_path)
    assert torch.load(tmp_path / "state.pt", weights_only=False)["done"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again


def test_a_reconstructed_student_exports_to_integers_and_to_onnx(tiny_entry, tmp_path):
    import onnxruntime

    from dfq.quant.onnx_export import export_onnx

    torch.manual_seed(0)
    x = torch.randn(32, 3, 8, 8)
    policy = QuantPolicy(w_bits=4, a_bits=4, weight=QuantSpec(granularity="per_channel", dynamic=True))
    student, _ = reconstruct(
        calibrated(tiny_entry.module, x, policy), tiny_entry.module, x, ReconstructConfig(**FAST)
    )
    export_quantized(student, tmp_path / "rec.pt")
    rebuilt = load_quantized(type(tiny_entry.module)(), tmp_path / "rec.pt")
    assert torch.allclose(rebuilt(x), student(x), atol=1e-5)
    path = export_onnx(student, x[:2], tmp_path / "rec.onnx")
    logits = onnxruntime.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    assert np.allclose(logits, student(x).detach().numpy(), atol=1e-4)
