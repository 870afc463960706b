"""The fine-tuning terms of dfq.distill.losses, each against its definition (PLF, SynQ, HAST)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from dfq.distill.distill import distill
from dfq.distill.losses import (
    LossInputs,
    distillation_loss,
    filtered_cross_entropy,
    forward_with_cam,
    hard_samples,
    last_conv,
    loss_terms,
    low_pass,
)
from dfq.distill.module import DistillationModule, FinetuneConfig
from tests.distill.test_distill import TRAINER, setup

# teacher probabilities of the label: 0.9, 0.5, 0.75 (difficulty 0.1, 0.5, 0.25)
TEACHER = torch.tensor([[math.log(9.0), 0.0], [0.0, 0.0], [0.0, math.log(3.0)]])
LABELS = torch.tensor([0, 0, 1])


@pytest.mark.parametrize(
    ("kind", "threshold", "kept"),
    [("none", 0.5, 3), ("difficulty", 0.3, 2), ("entropy", 0.5, 1)],  # entropies / log 2: 0.47, 1, 0.81
)
def test_label_filters_keep_the_samples_their_paper_keeps(kind, threshold, kept):
    student = torch.zeros(3, 2)  # cross-entropy log 2 for every sample
    loss = filtered_cross_entropy(student, TEACHER, LABELS, kind, threshold)
    assert loss.item() == pytest.approx(kept * math.log(2.0) / 3)


def test_an_unknown_label_filter_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"finetune.label_filter='focal' is invalid; valid: \['none'"):
        FinetuneConfig(label_filter="focal")


def test_low_pass_keeps_a_constant_and_damps_the_highest_frequency_by_its_gain():
    constant = torch.full((1, 3, 8, 8), 0.7)
    assert torch.allclose(low_pass(constant, 2.0), constant, atol=1e-6)
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    checkerboard = ((-1.0) ** (i + j)).expand(1, 1, 8, 8)
    # the checkerboard sits 4 bins from the centre on both axes: gain exp(-(16 + 16) / (2 * 4^2)) = 1/e
    assert torch.allclose(low_pass(checkerboard, 4.0), checkerboard * math.exp(-1.0), atol=1e-6)


class ConvPoolLinear(nn.Module):
    """conv -> spatial mean -> linear: the gradient of logit c at the conv output is fc[c, k] / HW."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_grad_cam_is_the_relu_of_the_gradient_weighted_maps_min_max_normalized():
    torch.manual_seed(0)
    model, x = ConvPoolLinear(), torch.randn(2, 3, 6, 6)
    cam = forward_with_cam(model, last_conv(model, x), x)
    logits = model(x)
    maps = model.conv(x).detach()
    weights = model.fc.weight[logits.argmax(1)].detach().clamp(min=1e-10) / 36  # fc[c, k] / HW
    expected = torch.relu((weights[:, :, None, None] * maps).sum(1)).flatten(1)
    low, high = expected.min(1, keepdim=True).values, expected.max(1, keepdim=True).values
    assert torch.allclose(cam, (expected - low) / (high - low + 1e-10), atol=1e-5)


def loss_inputs(student: nn.Module, teacher: nn.Module, x: torch.Tensor, labels=None) -> LossInputs:
    with torch.no_grad():
        teacher_logits = teacher(x)
    return LossInputs(x, labels, student, teacher, student(x), teacher_logits)


def test_cam_alignment_is_zero_for_the_teacher_itself_and_trains_a_different_student(tiny_entry):
    teacher, student, x = setup(tiny_entry)
    config = FinetuneConfig(cam_weight=2.0, distill_weight=0.0)
    assert loss_terms(loss_inputs(copy.deepcopy(teacher), teacher, x[:8]), config)["cam"].item() == 0.0
    cam = loss_terms(loss_inputs(student, teacher, x[:8]), config)["cam"]
    cam.backward()
    assert cam.item() > 0 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_the_cam_term_reuses_the_steps_forward_passes_with_the_same_loss_and_gradient(tiny_entry):
    teacher, student, x = setup(tiny_entry)
    config = FinetuneConfig(cam_weight=2.0, temperature=4.0)
    module = DistillationModule(student, teacher, config, steps=1)
    last_conv(student, x), last_conv(teacher, x)  # found once per model, by a traced pass
    calls = {"student": 0, "teacher": 0}
    for name in calls:
        getattr(module, name).register_forward_pre_hook(
            lambda *a, name=name: calls.__setitem__(name, calls[name] + 1)
        )
    reused = module.terms(x[:8], None, None, 1.0)
    assert calls == {"student": 1, "teacher": 1}
    sum(reused.values()).backward()
    grads = [None if p.grad is None else p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    own = loss_terms(loss_inputs(student, teacher, x[:8]), config)  # the CAM term's own passes
    assert calls == {"student": 3, "teacher": 3}
    assert {k: v.item() for k, v in reused.items()} == pytest.approx({k: v.item() for k, v in own.items()})
    sum(own.values()).backward()
    assert any(a is not None for a in grads)
    for a, p in zip(grads, student.parameters(), strict=True):
        assert (a is None and p.grad is None) or torch.allclose(a, p.grad, atol=1e-6)


def test_terms_are_weighted_by_their_fields_and_skipped_at_zero(tiny_entry):
    teacher, student, x = setup(tiny_entry)
    batch = loss_inputs(student, teacher, x[:16], torch.zeros(16, dtype=torch.long))
    kl = distillation_loss(batch.student_logits, batch.teacher_logits, 2.0)
    terms = loss_terms(batch, FinetuneConfig(temperature=2.0, distill_weight=3.0, label_weight=0.5))
    assert set(terms) == {"kl", "label"} and terms["kl"].item() == pytest.approx(3.0 * kl.item(), rel=1e-6)
    ce = torch.nn.functional.cross_entropy(batch.student_logits, batch.labels)
    assert terms["label"].item() == pytest.approx(0.5 * ce.item(), rel=1e-6)
    assert set(loss_terms(batch, FinetuneConfig(label_weight=0.5), skip=("label",))) == {"kl"}


def test_hard_samples_step_up_the_loss_by_the_sign_of_its_gradient(tiny_entry):
    teacher, student, x = setup(tiny_entry)
    x = x[:16].clone().requires_grad_(True)
    loss = distillation_loss(student(x), teacher(x), 1.0)
    harder = hard_samples(x, loss, 0.05)
    assert torch.allclose((harder - x).abs(), torch.full_like(x, 0.05))
    assert distillation_loss(student(harder), teacher(harder), 1.0) > loss


def test_every_term_together_trains_a_student(tiny_entry):
    teacher, student, x = setup(tiny_entry)
    labels = teacher(x).argmax(1)
    config = FinetuneConfig(
        epochs=2, batch_size=32, lr=0.02, label_weight=1.0, label_filter="difficulty",
        cam_weight=1.0, low_pass=3.0, hard_step=0.01,
    )  # fmt: skip
    before = copy.deepcopy(student)
    trained = distill(student, teacher, x, config, labels, trainer_options=TRAINER)
    changed = [not torch.equal(a, b) for a, b in zip(before.parameters(), trained.parameters(), strict=True)]
    assert any(changed) and all(torch.isfinite(p).all() for p in trained.parameters())
