"""The distillation LightningModule: fake-quantized student, frozen float teacher, KL at temperature T."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dfq.data.augment import augment
from dfq.distill.losses import (
    LABEL_FILTERS,
    LossInputs,
    capture_output,
    distillation_loss,
    hard_samples,
    last_conv,
    loss_terms,
)
from dfq.ranges import SEED_MAX, check_ranges, ranged
from dfq.speed import SpeedConfig, prepare, to_memory_format


@dataclass
class FinetuneConfig:
    """Budget, loss and data handling of quantization-aware distillation (`conf/finetune/`)."""

    enabled: bool = True
    epochs: int = ranged(10, 0)
    num_samples: int | None = ranged(None, 1)  # the first N of the sample set (None: all)
    batch_size: int = ranged(64, 1)
    lr: float = ranged(0.005, 0, open_low=True)
    momentum: float = ranged(0.9, 0, 1, open_high=True)
    weight_decay: float = ranged(0.0, 0)
    temperature: float = ranged(1.0, 0, open_low=True)
    distill_weight: float = ranged(1.0, 0)  # weight of the KL to the teacher (IntraQ/HAST/SynQ: 20)
    label_weight: float = ranged(0.0, 0)  # cross-entropy to the generator's labels, where it has them
    label_filter: str = "none"  # which labels count: none, entropy (PLF), difficulty (SynQ)
    label_threshold: float = ranged(0.5, 0, 1)  # the filter's threshold (PLF entropy, SynQ difficulty tau)
    cam_weight: float = ranged(0.0, 0)  # SynQ's Grad-CAM alignment with the teacher at the last conv
    low_pass: float | None = ranged(None, 0, open_low=True)  # SynQ's Gaussian low-pass cutoff (None: off)
    hard_step: float = ranged(0.0, 0)  # HAST's hard samples: signed-gradient step on the inputs (0: off)
    crop_padding: int = ranged(0, 0)  # random-crop augmentation: pad this many pixels, crop back
    flip: bool = False
    augment_copies: int = ranged(1, 1)  # batch augmentation: independently augmented copies of each sample
    mixup: float = ranged(0.0, 0)  # mixup of samples, Beta(mixup, mixup) weights; 0 = off
    freeze_bn: bool = True
    holdout: float = ranged(0.0, 0, 1, open_high=True)  # fraction held out; the lowest held-out KL wins
    grad_clip: float | None = ranged(None, 0, open_low=True)  # largest gradient norm per step (None: off)
    resume: bool = True  # continue from `last.ckpt` in the checkpoint folder, when there is one
    seed: int = ranged(0, 0, SEED_MAX)

    @property
    def active(self) -> bool:
        """Whether fine-tuning runs at all (enabled, with at least one epoch)."""
        return self.enabled and self.epochs > 0

    def __post_init__(self) -> None:
        check_ranges(self, "finetune")
        if self.label_filter not in LABEL_FILTERS:
            raise ValueError(
                f"finetune.label_filter={self.label_filter!r} is invalid; valid: {list(LABEL_FILTERS)}"
            )


def augment_batch(
    x: torch.Tensor, y: torch.Tensor | None, copies: int, padding: int, flip: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batch augmentation (Hoffer et al., CVPR 2020): `copies` independently augmented copies per sample."""
    if copies > 1:
        x = x.repeat(copies, *([1] * (x.dim() - 1)))
        y = None if y is None else y.repeat(copies)
    return augment(x, padding, flip), y


def mixup(x: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Mixup (Zhang et al., ICLR 2018): lam x + (1 - lam) x[perm], lam ~ Beta(alpha, alpha).

    Returns the mixed batch, the permutation and lam (None and 1.0 when alpha is 0: unchanged).
    """
    if alpha <= 0:
        return x, None, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x), device=x.device)
    return lam * x + (1.0 - lam) * x[perm], perm, lam


class DistillationModule(pl.LightningModule):
    """Trains the quantized student to match the teacher's softened outputs (STE through rounding).

    With a validation loader (held-out samples), the student state with the lowest held-out KL is
    kept (and saved in Lightning checkpoints, so a resumed run still knows it); `best_state` gives it.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        config: FinetuneConfig,
        steps: int,
        speed: SpeedConfig | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.config = config
        self.speed = speed
        # the callables that run them (compiled when asked for), kept out of the module tree so that
        # checkpoints hold each weight once
        self.runners = {"student": prepare(student, speed), "teacher": prepare(teacher, speed)}
        self.total_steps = max(1, steps)
        self.best_kl = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self._val_kl: list[tuple[float, int]] = []

    def train(self, mode: bool = True) -> DistillationModule:
        """Keep the teacher (and, when frozen, the student's BatchNorm) in eval mode."""
        super().train(mode)
        self.teacher.eval()
        if self.config.freeze_bn:
            for module in self.student.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def on_train_epoch_start(self) -> None:
        """Lightning keeps submodules in the mode it finds them (a calibrated student is in eval mode)."""
        self.train()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed augmentation and mixup from the step number, so a resumed run draws what an
        uninterrupted one would have drawn."""
        torch.manual_seed(self.config.seed * 1_000_003 + self.global_step)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        c = self.config
        labels = batch[1] if len(batch) > 1 else None
        x, labels = augment_batch(batch[0], labels, c.augment_copies, c.crop_padding, c.flip)
        x, perm, lam = mixup(x, c.mixup)
        x = to_memory_format(x, self.speed).requires_grad_(c.hard_step > 0)
        terms = self.terms(x, labels, perm, lam)
        loss = sum(terms.values())
        if c.hard_step > 0:  # HAST: the same loss again on harder copies of the batch
            harder = self.terms(hard_samples(x, loss, c.hard_step), labels, perm, lam, cam=False)
            terms |= {f"{name}_hard": value for name, value in harder.items()}
            loss = loss + sum(harder.values())
        for name, value in terms.items():
            self.log(f"distill/{name}", value.detach(), on_step=True, on_epoch=True)
        self.log("distill/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def terms(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        perm: torch.Tensor | None,
        lam: float,
        cam: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The weighted loss terms (dfq.distill.losses) of one batch; SynQ's CAM term reuses these
        forward passes through hooks, except in compiled runners (where hooks need not fire)."""
        cam = cam and self.config.cam_weight > 0
        if cam and not (self.speed and self.speed.compile):
            return self.terms_with_cam(x, labels, perm, lam)
        with torch.no_grad():
            teacher_logits = self.runners["teacher"](x)
        student_logits = self.runners["student"](x)
        mix = None if perm is None else (perm, lam)
        batch = LossInputs(x, labels, self.student, self.teacher, student_logits, teacher_logits, mix)
        return loss_terms(batch, self.config, skip=() if cam else ("cam",))

    def terms_with_cam(
        self, x: torch.Tensor, labels: torch.Tensor | None, perm: torch.Tensor | None, lam: float
    ) -> dict[str, torch.Tensor]:
        """`terms` with both last convs' outputs captured in the forward passes for the CAM term."""
        student_layer, teacher_layer = last_conv(self.student, x), last_conv(self.teacher, x)
        with capture_output(teacher_layer, leaf=True) as teacher_out, torch.enable_grad():
            teacher_logits = self.runners["teacher"](x.detach())  # a graph from the last conv on only
        with capture_output(student_layer) as student_out:
            student_logits = self.runners["student"](x)
        mix = None if perm is None else (perm, lam)
        cam_inputs = (student_out[-1], student_logits), (teacher_out[-1], teacher_logits)
        batch = LossInputs(
            x, labels, self.student, self.teacher, student_logits, teacher_logits.detach(), mix, cam_inputs
        )
        return loss_terms(batch, self.config)

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x = batch[0]
        kl = distillation_loss(self.student(x), self.teacher(x), self.config.temperature)
        self._val_kl.append((float(kl) * len(x), len(x)))

    def on_validation_epoch_end(self) -> None:
        total = sum(n for _, n in self._val_kl)
        kl = sum(v for v, _ in self._val_kl) / max(total, 1)
        self._val_kl = []
        self.log("val/kl", kl, prog_bar=True)
        if not self.trainer.sanity_checking and kl < self.best_kl:
            self.best_kl = kl
            self.best_state = copy.deepcopy(self.student.state_dict())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dfq_best"] = {"kl": self.best_kl, "state": self.best_state}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        best = checkpoint.get("dfq_best") or {}
        self.best_kl, self.best_state = best.get("kl", math.inf), best.get("state")

    def configure_optimizers(self):
        params = [p for p in self.student.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=self.config.lr, momentum=self.config.momentum, nesterov=self.config.momentum > 0,
            weight_decay=self.config.weight_decay,
        )  # fmt: skip
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
