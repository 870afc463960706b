"""Speed switches change how fast, not what: each gives the samples and students of the eager fp32 run."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from dfq.distill.distill import distill
from dfq.distill.module import FinetuneConfig
from dfq.speed import SpeedConfig, checkpoint_blocks, enable_checkpointing
from dfq.synthesis.batches import synthesize
from dfq.synthesis.generators import GeneratorConfig
from tests.conftest import make_tiny_entry

RECIPE = GeneratorConfig(num_samples=10, batch_size=4, iterations=6, lr=0.1, log_every=0)
CPU = {"accelerator": "cpu", "devices": 1}


def samples(speed: SpeedConfig | None, options: dict | None = None) -> torch.Tensor:
    entry = make_tiny_entry()
    return synthesize(entry, RECIPE, trainer_options={**CPU, **(options or {})}, speed=speed).x


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_channels_last_and_checkpointing_give_the_eager_samples():
    reference = samples(None)
    for speed in (SpeedConfig(channels_last=True), SpeedConfig(checkpointing=True)):
        torch.testing.assert_close(samples(speed), reference, rtol=1e-4, atol=1e-4)


def test_checkpointed_blocks_with_batchnorm_inside_give_the_eager_samples():
    """BN hooks inside a recomputed block run again in the backward pass and must save the same tensors."""
    tiny = make_tiny_entry()
    m = tiny.module
    blocks = torch.nn.Sequential(
        torch.nn.Sequential(m.conv1, m.bn1, m.relu1),
        torch.nn.Sequential(m.conv2, m.bn2, m.relu2, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), m.fc),
    )
    entry = dataclasses.replace(tiny, module=blocks.eval())
    reference = synthesize(entry, RECIPE, trainer_options=CPU).x
    checkpointed = synthesize(entry, RECIPE, trainer_options=CPU, speed=SpeedConfig(checkpointing=True)).x
    torch.testing.assert_close(checkpointed, reference, rtol=1e-4, atol=1e-4)


def test_compiled_teacher_gives_the_eager_samples_and_compiles_once_per_batch_shape():
    reference = samples(None)
    torch._dynamo.utils.counters.clear()
    compiled = samples(SpeedConfig(compile=True, compile_backend="aot_eager", static_shapes=True))
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-4)
    # batches of 4, 4 and 2 samples: one graph per shape, none per batch or per step
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


def test_inductor_compiles_the_teacher_on_cpu():
    reference = samples(None)
    torch.testing.assert_close(samples(SpeedConfig(compile=True)), reference, rtol=1e-3, atol=1e-3)


def test_bf16_autocast_synthesis_lowers_the_loss():
    entry = make_tiny_entry()
    recipe = GeneratorConfig(num_samples=8, batch_size=8, iterations=0)
    start = synthesize(entry, recipe, trainer_options=CPU).x
    done = synthesize(
        entry, GeneratorConfig(num_samples=8, batch_size=8, iterations=20, log_every=0),
        trainer_options={**CPU, "precision": "bf16-mixed"},
    ).x  # fmt: skip
    assert bn_loss(entry, done) < 0.5 * bn_loss(entry, start)


def bn_loss(entry, x: torch.Tensor) -> float:
    from dfq.synthesis.module import SynthesisModule

    module = SynthesisModule(entry.module, entry.normalization, RECIPE, len(x), None, 0)
    with torch.no_grad():
        module.inputs.copy_(x)
        total, _, _ = module.losses()
    module.runner.close()
    return float(total)


def test_checkpointed_blocks_keep_names_and_gradients():
    entry = make_tiny_entry()
    model = torch.nn.Sequential(
        torch.nn.Sequential(entry.module.conv1, entry.module.bn1, torch.nn.ReLU()),
        torch.nn.Sequential(entry.module.conv2, entry.module.bn2),
    )
    assert checkpoint_blocks(model) == ["0.0", "0.1", "0.2", "1.0", "1.1"]
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    (reference,) = torch.autograd.grad(model(x).square().sum(), x)
    patched = enable_checkpointing(copy.deepcopy(model), ["0", "1"])
    assert patched[0].forward.func is checkpoint
    assert [n for n, _ in patched.named_modules()] == [n for n, _ in model.named_modules()]
    (grad,) = torch.autograd.grad(patched(x).square().sum(), x)
    torch.testing.assert_close(grad, reference)


def test_distillation_with_speed_switches_matches_eager():
    def student_after(speed: SpeedConfig | None) -> dict[str, torch.Tensor]:
        teacher = make_tiny_entry().module
        student = copy.deepcopy(make_tiny_entry(seed=1).module).train().requires_grad_(True)
        x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        config = FinetuneConfig(epochs=2, batch_size=8, freeze_bn=True)
        return distill(student, teacher, x, config, trainer_options=CPU, speed=speed).state_dict()

    reference = student_after(None)
    fast = student_after(SpeedConfig(channels_last=True, compile=True, compile_backend="aot_eager"))
    assert reference.keys() == fast.keys()
    for key in reference:
        torch.testing.assert_close(fast[key], reference[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compile_mode": "fastest"}, r"speed.compile_mode='fastest' is invalid; valid: .*reduce-overhead"),
        ({"compile": True, "compile_backend": "tvmx"}, r"compile_backend='tvmx' is invalid; .*inductor"),
    ],
)
def test_bad_switch_values_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        SpeedConfig(**options)
