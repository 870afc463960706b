"""Layer policy: which layers get which bits (by name and by graph order), residual adds, 16-bit = FP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfq.evaluate import top1
from dfq.models.cifar_resnet import cifar_resnet
from dfq.models.ops import Add
from dfq.quant.calibrate import calibrate
from dfq.quant.modules import QuantAdd, QuantConv2d, QuantLinear
from dfq.quant.policy import QuantPolicy, graph_order
from dfq.quant.prepare import quantize, quantizers
from dfq.quant.quantizer import Quantizer


def bits(quantizer: nn.Module) -> int | None:
    return quantizer.spec.bits if isinstance(quantizer, Quantizer) else None


class Reversed(nn.Module):
    """Modules declared in the opposite order of their use: graph order must follow the forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.body = nn.Conv2d(4, 4, 1)
        self.stem = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean(dim=(2, 3)))


def test_graph_order_follows_the_forward_pass_not_the_declaration():
    order = graph_order(Reversed(), torch.randn(1, 3, 4, 4), (nn.Conv2d, nn.Linear))
    assert order == ["stem", "body", "head"]


def test_first_last_bits_overrides_and_exclude(tiny_entry):
    x = torch.randn(2, 3, 8, 8)
    policy = QuantPolicy(w_bits=4, a_bits=4, first_last_bits=8)
    student = quantize(tiny_entry.module, policy, x)
    assert bits(student.conv1.weight_quantizer) == 8 and bits(student.fc.input_quantizer) == 8
    assert bits(student.conv2.weight_quantizer) == 4 and bits(student.conv2.input_quantizer) == 4
    policy = QuantPolicy(w_bits=4, a_bits=4, overrides={"conv*": {"w_bits": 6}, "@-1": {"a_bits": 16}})
    student = quantize(tiny_entry.module, policy, x)
    assert bits(student.conv1.weight_quantizer) == 6 and bits(student.conv2.weight_quantizer) == 6
    assert bits(student.fc.weight_quantizer) == 4 and bits(student.fc.input_quantizer) is None
    student = quantize(tiny_entry.module, QuantPolicy(exclude=["conv2"]), x)
    assert type(student.conv2) is nn.Conv2d and isinstance(student.conv1, QuantConv2d)
    assert isinstance(student.fc, QuantLinear)


def test_invalid_bits_name_the_key():
    with pytest.raises(ValueError, match="quant.overrides.fc.a_bits=12"):
        QuantPolicy(overrides={"fc": {"a_bits": 12}})
    with pytest.raises(ValueError, match="quant.placement"):
        QuantPolicy(placement="everywhere")


def test_resnet_state_dict_keys_are_unchanged_by_the_residual_add():
    model = cifar_resnet(20)
    assert sum(isinstance(m, Add) for m in model.modules()) == 9
    assert not any(".add" in key for key in model.state_dict())
    assert (
        "layer3.2.bn2.running_var" in model.state_dict() and len(model.state_dict()) == 19 + 19 * 5 + 2
    )  # convs, BNs, linear


def test_residual_additions_are_quantized_when_the_policy_asks():
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    x = torch.randn(8, 3, 32, 32)
    plain = quantize(model, QuantPolicy(), x[:2])
    assert not any(isinstance(m, QuantAdd) for m in plain.modules())
    policy = QuantPolicy(a_bits=4, quantize_residual=True, overrides={"layer3.*": {"a_bits": 8}})
    student = quantize(model, policy, x[:2])
    adds = {n: m for n, m in student.named_modules() if isinstance(m, QuantAdd)}
    assert len(adds) == 9
    assert (
        bits(adds["layer1.0.add"].output_quantizer) == 4 and bits(adds["layer3.1.add"].output_quantizer) == 8
    )
    calibrate(student, x)
    scale = adds["layer2.2.add"].output_quantizer.scale
    captured = []
    adds["layer2.2.add"].register_forward_hook(lambda m, i, out: captured.append(out))
    student(x)
    codes = captured[0] / scale  # every output of the addition lies on the grid
    assert torch.allclose(codes, codes.round(), atol=1e-3)


def test_16_bit_weights_and_activations_reproduce_the_fp_outputs(tiny_entry):
    x = torch.randn(16, 3, 8, 8)
    policy = QuantPolicy(w_bits=16, a_bits=16, quantize_residual=True)
    student = calibrate(quantize(tiny_entry.module, policy, x[:2]), x)
    assert not quantizers(student)
    assert torch.equal(student(x), tiny_entry.module(x))


def test_16_bit_student_matches_the_digits_teacher_accuracy(digits_teacher):
    teacher, data = digits_teacher
    test = data.split("test", teacher.normalization)
    x = data.split("train", teacher.normalization).tensors[0][:64]
    student = calibrate(quantize(teacher.module, QuantPolicy(w_bits=16, a_bits=32), x[:2]), x)
    accuracy = top1(student, test)
    assert accuracy == top1(teacher.module, test) > 90.0
    low = calibrate(quantize(teacher.module, QuantPolicy(w_bits=8, a_bits=8), x[:2]), x)
    assert top1(low, test) > accuracy - 3.0  # and 8 bits stay close


def test_16_bit_resnet20_matches_fp_accuracy_on_real_test_images(shared_dir):
    from dfq.data.npz import NpzDataset
    from dfq.models.load import load_weights, read_state_dict
    from dfq.models.normalization import Normalization

    model = cifar_resnet(20).eval()
    load_weights(model, read_state_dict(shared_dir / "models/cifar10/resnet20-12fca82f.th"), "resnet20")
    norm = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 32, 10)
    data = NpzDataset(
        str(shared_dir / "data/cifar10/train_10k.npz"), str(shared_dir / "data/cifar10/test.npz")
    )
    test = torch.utils.data.Subset(data.split("test", norm), range(300))
    x = data.split("train", norm).tensors[0][:64]
    policy = QuantPolicy(w_bits=16, a_bits=16, quantize_residual=True)
    student = calibrate(quantize(model, policy, x[:2]), x)
    assert top1(student, test) == top1(model, test) > 85.0
