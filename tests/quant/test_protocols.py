"""Protocol presets (conf/quant/{strict,gdfq,genie}.yaml) place exactly the expected quantizers."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn

from dfq.config import register_configs
from dfq.evaluate import top1
from dfq.models.cifar_resnet import cifar_resnet
from dfq.quant.calibrate import calibrate
from dfq.quant.modules import QuantAct
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize, quantizers
from dfq.quant.quantizer import Quantizer

register_configs()
PROTOCOLS = ("strict", "gdfq", "genie")


def preset(name: str, *overrides: str) -> QuantPolicy:
    with initialize_config_module("dfq.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"quant={name}", "paths.output_dir=/tmp", *overrides])
    return OmegaConf.to_object(cfg.quant)


def resnet20_student(protocol: str, *overrides: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    return model, quantize(model, preset(protocol, *overrides), torch.randn(2, 3, 32, 32))


def bits(quantizer: nn.Module) -> int | None:
    return quantizer.spec.bits if isinstance(quantizer, Quantizer) else None


def test_gdfq_quantizes_every_weight_and_one_activation_per_relu():
    model, student = resnet20_student("gdfq")
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    acts = [n for n, m in student.named_modules() if isinstance(m, QuantAct)]
    assert acts == relus and len(relus) == 19  # conv1's ReLU + two per block x 9 blocks
    assert all(bits(student.get_submodule(n).output_quantizer) == 4 for n in acts)
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for name in layers:
        layer = student.get_submodule(name)
        assert bits(layer.weight_quantizer) == 4, name
        assert bits(layer.input_quantizer) is None, name  # no quantizer at any layer input
    expected = {f"{n}.weight_quantizer" for n in layers} | {f"{n}.output_quantizer" for n in acts}
    assert set(quantizers(student)) == expected


def test_genie_keeps_first_and_last_layers_at_8_bits():
    _, student = resnet20_student("genie")
    assert bits(student.conv1.weight_quantizer) == 8 and bits(student.conv1.input_quantizer) is None
    assert bits(student.layer1[0].conv1.input_quantizer) == 8  # the second layer's input
    assert bits(student.layer1[0].conv1.weight_quantizer) == 4
    assert bits(student.linear.weight_quantizer) == 8 and bits(student.linear.input_quantizer) == 8
    assert bits(student.layer3[2].conv2.weight_quantizer) == 4
    assert bits(student.layer3[2].conv2.input_quantizer) == 4


def test_strict_quantizes_the_network_input_and_classifier_input():
    _, student = resnet20_student("strict")
    assert bits(student.conv1.input_quantizer) == 4
    assert bits(student.linear.input_quantizer) == 4
    assert not any(isinstance(m, QuantAct) for m in student.modules())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_presets_at_16_bits_reproduce_fp_accuracy(protocol: str, digits_teacher):
    teacher, data = digits_teacher
    test = data.split("test", teacher.normalization)
    x = data.split("train", teacher.normalization).tensors[0][:128]
    policy = preset(protocol, "quant.w_bits=16", "quant.a_bits=16", "quant.overrides={}")
    student = calibrate(quantize(teacher.module, policy, x[:2]), x)
    assert top1(student, test) == top1(teacher.module, test)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_presets_at_16_bits_reproduce_resnet20_accuracy(protocol: str, shared_dir):
    from dfq.data.npz import NpzDataset
    from dfq.models.load import load_weights, read_state_dict
    from dfq.models.normalization import Normalization

    model = cifar_resnet(20).eval()
    load_weights(model, read_state_dict(shared_dir / "models/cifar10/resnet20-12fca82f.th"), "resnet20")
    norm = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 32, 10)
    data = NpzDataset(
        train=str(shared_dir / "data/cifar10/train_10k.npz"), test=str(shared_dir / "data/cifar10/test.npz")
    )
    test = torch.utils.data.Subset(data.split("test", norm), range(300))
    x = data.split("train", norm).tensors[0][:64]
    policy = preset(protocol, "quant.w_bits=16", "quant.a_bits=16", "quant.overrides={}")
    student = calibrate(quantize(model, policy, x[:2]), x)
    assert top1(student, test) == top1(model, test) > 85.0
