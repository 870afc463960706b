"""Quantization-aware distillation: the loss, batch augmentation, mixup, hold-out selection, resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from dfq.distill.batches import SampleBatches
from dfq.distill.distill import distill, held_out_kl
from dfq.distill.losses import distillation_loss
from dfq.distill.module import FinetuneConfig, augment_batch, mixup
from dfq.quant.calibrate import calibrate
from dfq.quant.policy import QuantPolicy
from dfq.quant.prepare import quantize

TRAINER = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}


def test_distillation_loss_hand_computed():
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax (3/4, 1/4)
    student = torch.tensor([[0.0, 0.0]])  # (1/2, 1/2)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert distillation_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # at T = 2 the teacher is (sqrt 3, 1) / (sqrt 3 + 1); the loss is scaled by T^2 = 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    soft = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(4 * soft, rel=1e-6)
    assert distillation_loss(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_batch_augmentation_makes_independent_copies():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    y = torch.tensor([5, 7])
    out, labels = augment_batch(x, y, copies=3, padding=1, flip=True)
    assert out.shape == (6, 3, 4, 4) and labels.tolist() == [5, 7, 5, 7, 5, 7]
    assert not torch.equal(out[0], out[2]) or not torch.equal(out[2], out[4])  # copies differ
    same, none = augment_batch(x, None, copies=1, padding=0, flip=False)
    assert torch.equal(same, x) and none is None


def test_mixup_is_a_convex_combination_and_off_at_zero():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    assert mixup(x, 0.0)[0] is x
    mixed, perm, lam = mixup(x, 0.4)
    assert 0.0 <= lam <= 1.0
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])


def test_holdout_split_is_disjoint_seeded_and_checked():
    x, y = torch.arange(10.0), torch.arange(10)
    train, held = SampleBatches(x, y).split(0.3, seed=1)
    assert len(held.x) == 3 and len(train.x) == 7
    assert sorted(train.x.tolist() + held.x.tolist()) == x.tolist() and torch.equal(train.x, train.y.float())
    assert SampleBatches(x).split(0.0, 0)[1] is None
    with pytest.raises(ValueError, match="finetune.holdout=1.0"):
        FinetuneConfig(holdout=1.0)


def setup(tiny_entry, w_bits: int = 3, count: int = 96) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(count, 3, 8, 8) * 0.7 + 0.3
    teacher = tiny_entry.module
    return teacher, calibrate(quantize(teacher, QuantPolicy(w_bits=w_bits, a_bits=4), x[:2]), x), x


def test_the_distillation_loss_decreases(tiny_entry):
    teacher, student, x = setup(tiny_entry)
    loader = [(x,)]
    before = held_out_kl(student, teacher, loader, 1.0)
    config = FinetuneConfig(epochs=8, batch_size=32, lr=0.05, augment_copies=2, mixup=0.2, crop_padding=1)
    distill(student, teacher, x, config, trainer_options=TRAINER)
    after = held_out_kl(student, teacher, loader, 1.0)
    assert after < 0.7 * before


class FreshBatches:
    """A provider that draws new inputs every step, as a generator trained beside the student would."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def loader(self, batch_size: int, seed: int):
        self.batch_size = batch_size
        return self

    def __iter__(self):
        return iter([(torch.randn(self.batch_size, 3, 8, 8) * 0.7 + 0.3,) for _ in range(self.steps)])

    def __len__(self) -> int:
        return self.steps

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.steps


def test_a_batch_provider_feeds_distillation(tiny_entry):
    teacher, student, x = setup(tiny_entry)
    config = FinetuneConfig(epochs=2, batch_size=32, lr=0.05)
    tensor = distill(copy.deepcopy(student), teacher, x, config, trainer_options=TRAINER)
    provided = distill(copy.deepcopy(student), teacher, SampleBatches(x), config, trainer_options=TRAINER)
    for name, value in tensor.state_dict().items():
        assert torch.equal(value, provided.state_dict()[name]), name  # the tensor path is this provider
    before = held_out_kl(student, teacher, [(x,)], 1.0)
    fresh = distill(
        student, teacher, FreshBatches(6), FinetuneConfig(epochs=3, lr=0.05), trainer_options=TRAINER
    )
    assert held_out_kl(fresh, teacher, [(x,)], 1.0) < 0.8 * before
    with pytest.raises(ValueError, match="finetune.holdout=0.25 needs a fixed sample set"):
        distill(fresh, teacher, FreshBatches(1), FinetuneConfig(holdout=0.25), trainer_options=TRAINER)


def test_holdout_selection_keeps_the_best_student_when_training_diverges(tiny_entry):
    teacher, student, x = setup(tiny_entry)
    config = FinetuneConfig(epochs=2, batch_size=32, lr=50.0, holdout=0.25)  # diverges
    held = SampleBatches(x).split(0.25, config.seed)[1].x
    before = held_out_kl(student, teacher, [(held,)], 1.0)
    diverged = distill(copy.deepcopy(student), teacher, x, FinetuneConfig(epochs=2, batch_size=32, lr=50.0),
                       trainer_options=TRAINER)  # fmt: skip
    assert held_out_kl(diverged, teacher, [(held,)], 1.0) > before
    selected = distill(student, teacher, x, config, trainer_options=TRAINER)
    assert held_out_kl(selected, teacher, [(held,)], 1.0) <= before + 1e-6


def test_checkpoints_are_written_and_a_rerun_resumes(tiny_entry, tmp_path):
    teacher, student, x = setup(tiny_entry)
    fresh = copy.deepcopy(student)
    config = FinetuneConfig(epochs=2, batch_size=32, lr=0.05, holdout=0.25)
    trained = distill(student, teacher, x, config, trainer_options=TRAINER, checkpoint_dir=tmp_path)
    assert (tmp_path / "last.ckpt").is_file()
    resumed = distill(fresh, teacher, x, config, trainer_options=TRAINER, checkpoint_dir=tmp_path)
    for (name, a), b in zip(trained.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # nothing left to train: the checkpointed student comes back


def step_size(student: nn.Module, teacher: nn.Module, x: torch.Tensor, grad_clip: float | None) -> float:
    """Norm of the parameter change of one plain-SGD distillation step at lr 1."""
    before = [p.detach().clone() for p in student.parameters()]
    config = FinetuneConfig(epochs=1, batch_size=len(x), lr=1.0, momentum=0.0, grad_clip=grad_clip)
    distill(student, teacher, x, config, trainer_options=TRAINER)
    changes = [(p.detach() - b).flatten() for p, b in zip(student.parameters(), before, strict=True)]
    return float(torch.cat(changes).norm())


def test_gradient_clipping_bounds_the_step(tiny_entry):
    teacher, student, x = setup(tiny_entry)
    assert step_size(copy.deepcopy(student), teacher, x, None) > 0.01
    assert step_size(student, teacher, x, 1e-3) == pytest.approx(1e-3, rel=1e-3)  # lr 1 x max norm


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_student_batchnorm_frozen_or_updated(tiny_entry, freeze_bn):
    teacher, student, x = setup(tiny_entry)
    before = student.bn1.running_mean.clone()
    distill(
        student,
        teacher,
        x,
        FinetuneConfig(epochs=1, batch_size=32, freeze_bn=freeze_bn),
        trainer_options=TRAINER,
    )
    assert torch.equal(student.bn1.running_mean, before) == freeze_bn
    assert torch.equal(teacher.bn1.running_mean, tiny_entry.module.bn1.running_mean)


@pytest.mark.parametrize(
    ("key", "value"),
    [("augment_copies", 0), ("mixup", -1.0), ("temperature", 0.0), ("epochs", -1), ("grad_clip", 0.0)],
)
def test_invalid_finetune_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"finetune.{key}"):
        FinetuneConfig(**{key: value})
