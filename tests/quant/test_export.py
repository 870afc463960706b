"""Export round trip: integer state dict + encodings JSON -> rebuilt model; ONNX QDQ in onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from dfq.evaluate import top1
from dfq.evaluate.cli import main as evaluate_main
from dfq.models.cifar_resnet import cifar_resnet
from dfq.quant.bn import fold_batchnorm
from dfq.quant.calibrate import calibrate
from dfq.quant.export import ExportError, export_quantized, load_quantized
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize, quantizers
from dfq.quant.quantizer import QuantSpec


def student_of(model: nn.Module, policy: QuantPolicy, x: torch.Tensor) -> nn.Module:
    return calibrate(quantize(model, policy, x[:2]), x)


def test_round_trip_of_a_tiny_student_is_exact(tiny_entry, tmp_path):
    x = torch.randn(32, 3, 8, 8)
    student = student_of(tiny_entry.module, QuantPolicy(w_bits=4, a_bits=4), x)
    path = tmp_path / "tiny.pt"
    export_quantized(student, path, {"model": "tiny"})
    state = torch.load(path, weights_only=True)
    assert state["conv1.weight"].dtype == torch.uint8 and int(state["conv1.weight"].max()) <= 15
    assert state["conv1.weight_quantizer.scale"].shape == (8,)  # per output channel
    document = json.loads(path.with_suffix(".json").read_text())
    encoding = next(e for e in document["encodings"] if e["name"] == "conv2.input_quantizer")
    assert {"name", "bits", "scale", "zero_point", "granularity"} <= set(encoding)
    assert encoding["bits"] == 4 and encoding["granularity"] == "per_tensor" and len(encoding["scale"]) == 1
    rebuilt = load_quantized(type(tiny_entry.module)(), path)
    assert torch.allclose(rebuilt(x), student(x), atol=1e-6)


def test_round_trip_with_folded_bn_residual_adds_and_symmetric_weights(tmp_path):
    torch.manual_seed(0)
    model = cifar_resnet(8).eval()  # one block per stage: the shortcut with padding and the identity one
    x = torch.randn(8, 3, 32, 32)
    policy = QuantPolicy(
        w_bits=3,
        a_bits=5,
        weight=QuantSpec(granularity="per_channel", symmetric=True, narrow_range=True, dynamic=True),
        quantize_residual=True,
        overrides={"@-1": {"w_bits": 8, "a_bits": 8}},
    )
    student = student_of(fold_batchnorm(model), policy, x)
    export_quantized(student, tmp_path / "resnet.pt")
    state = torch.load(tmp_path / "resnet.pt", weights_only=True)
    assert state["layer1.0.conv1.weight"].dtype == torch.int8 and "layer1.0.conv1.bias" in state
    rebuilt = load_quantized(cifar_resnet(8), tmp_path / "resnet.pt")  # the float architecture, with BN
    assert set(quantizers(rebuilt)) == set(quantizers(student))
    assert torch.allclose(rebuilt(x), student(x), atol=1e-5)


def test_a_learned_clipping_range_is_exported(tiny_entry, tmp_path):
    x = torch.randn(32, 3, 8, 8)
    policy = QuantPolicy(w_bits=8, a_bits=4, activation=QuantSpec(learnable_clip=True))
    student = student_of(tiny_entry.module, policy, x)
    with torch.no_grad():
        student.conv2.input_quantizer.clip_high.mul_(0.5)
    export_quantized(student, tmp_path / "clip.pt")
    rebuilt = load_quantized(type(tiny_entry.module)(), tmp_path / "clip.pt")
    assert torch.allclose(rebuilt(x), student(x), atol=1e-6)


def test_real_valued_weight_offsets_round_trip_but_not_to_onnx(tiny_entry, tmp_path):
    from dfq.quant.onnx_export import export_onnx

    x = torch.randn(32, 3, 8, 8)
    weight = QuantSpec(granularity="per_channel", dynamic=True, integer_zero_point=False)
    student = student_of(tiny_entry.module, QuantPolicy(w_bits=4, a_bits=8, weight=weight), x)
    export_quantized(student, tmp_path / "offset.pt")
    rebuilt = load_quantized(type(tiny_entry.module)(), tmp_path / "offset.pt")
    assert torch.allclose(rebuilt(x), student(x), atol=1e-5)
    with pytest.raises(ExportError, match="integer zero points"):
        export_onnx(student, x[:2], tmp_path / "offset.onnx")


def test_incomplete_or_mismatched_exports_fail_clearly(tiny_entry, tmp_path):
    x = torch.randn(8, 3, 8, 8)
    student = student_of(tiny_entry.module, QuantPolicy(), x)
    export_quantized(student, tmp_path / "a.pt")
    (tmp_path / "a.json").unlink()
    with pytest.raises(ExportError, match="a.json not found"):
        load_quantized(type(tiny_entry.module)(), tmp_path / "a.pt")
    export_quantized(student, tmp_path / "b.pt")
    with pytest.raises(ExportError, match="does not fit"):
        load_quantized(nn.Sequential(nn.Conv2d(3, 8, 3)), tmp_path / "b.pt")
    with pytest.raises(ExportError, match="uncalibrated"):
        export_quantized(quantize(tiny_entry.module, QuantPolicy(), x), tmp_path / "c.pt")


def test_evaluate_cli_reproduces_the_students_accuracy(tmp_path, capsys):
    from dfq.data.digits import DigitsDataset
    from dfq.models.digits import DigitsCNN
    from dfq.models.normalization import Normalization

    torch.manual_seed(0)
    model = DigitsCNN(num_classes=10, widths=(16, 32, 32)).eval()  # the `digits_cnn` config's architecture
    normalization = Normalization(mean=(0.3,), std=(0.32,), image_size=32, num_classes=10)
    data = DigitsDataset(test_fraction=0.25, seed=0, image_size=32)  # the `digits` config
    x = data.split("train", normalization).tensors[0][:64]
    student = student_of(model, QuantPolicy(w_bits=4, a_bits=8), x)
    export_quantized(student, tmp_path / "digits.pt", {"model": "digits_cnn", "dataset": "digits"})
    evaluate_main(["--checkpoint", str(tmp_path / "digits.pt"), "--max-samples", "200"])
    printed = capsys.readouterr().out
    expected = top1(student, torch.utils.data.Subset(data.split("test", normalization), range(200)))
    assert f"top-1 {expected:.2f} % on 200 test images" in printed


def test_evaluate_cli_says_what_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(
            ["--checkpoint", str(tmp_path / "none.pt"), "--model", "resnet20", "--dataset", "cifar10_npz"]
        )
    assert exit_info.value.code == 2
    assert "none.pt not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("w_bits", "a_bits", "opset", "int4"), [(8, 8, 18, False), (4, 4, 21, True), (3, 6, 21, True)]
)
def test_onnx_qdq_export_matches_the_fake_quantized_logits(tiny_entry, tmp_path, w_bits, a_bits, opset, int4):
    import onnx
    import onnxruntime

    from dfq.quant.onnx_export import export_onnx

    x = torch.randn(32, 3, 8, 8)
    student = student_of(tiny_entry.module, QuantPolicy(w_bits=w_bits, a_bits=a_bits), x)
    path = export_onnx(student, x[:2], tmp_path / "model.onnx", opset=opset)
    graph = onnx.load(str(path)).graph
    kinds = [node.op_type for node in graph.node]
    assert kinds.count("QuantizeLinear") == kinds.count("DequantizeLinear") == len(quantizers(student))
    four_bit = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    assert any(init.data_type in four_bit for init in graph.initializer) == int4
    session = onnxruntime.InferenceSession(str(path))
    logits = session.run(None, {"input": x.numpy()})[0]  # a batch size other than the example's
    reference = student(x).detach().numpy()
    assert np.allclose(logits, reference, atol=1e-4)
    assert (logits.argmax(1) == reference.argmax(1)).all()
