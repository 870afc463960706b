"""The distillation LightningModule: fake-quantized student, frozen float teacher, KL at temperature T."""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass
class FinetuneConfig:
    """Budget and loss of quantization-aware distillation (`conf/finetune/`)."""

    enabled: bool = True
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 0.0
    temperature: float = 1.0
    label_weight: float = 0.0  # cross-entropy to the generator's labels, where it has them
    crop_padding: int = 0  # random-crop augmentation: pad this many pixels, crop back
    flip: bool = False
    freeze_bn: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 0,
            "batch_size": self.batch_size > 0,
            "lr": self.lr > 0,
            "temperature": self.temperature > 0,
            "crop_padding": self.crop_padding >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"finetune.{key}={getattr(self, key)!r} is invalid; expected a positive value"
                )


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) of the softened distributions, scaled by T^2 (Hinton et al., 2015)."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2


def augment(x: torch.Tensor, padding: int, flip: bool) -> torch.Tensor:
    """Per-sample random crop (zero padding `padding`) and horizontal flip of a batch."""
    n, _, h, w = x.shape
    if padding:
        device = x.device
        padded = F.pad(x, (padding,) * 4)
        dy, dx = torch.randint(0, 2 * padding + 1, (2, n), device=device)
        rows = (dy[:, None] + torch.arange(h, device=device)).view(n, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w, device=device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=device).view(n, 1, 1, 1)
        channels = torch.arange(x.shape[1], device=device).view(1, -1, 1, 1)
        x = padded[batch, channels, rows, cols]
    if flip:
        mirrored = torch.rand(n, device=x.device) < 0.5
        x = torch.where(mirrored.view(n, 1, 1, 1), x.flip(3), x)
    return x


class DistillationModule(pl.LightningModule):
    """Trains the quantized student to match the teacher's softened outputs (STE through rounding)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, config: FinetuneConfig, steps: int) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.config = config
        self.total_steps = max(1, steps)

    def train(self, mode: bool = True) -> DistillationModule:
        """Keep the teacher (and, when frozen, the student's BatchNorm) in eval mode."""
        super().train(mode)
        self.teacher.eval()
        if self.config.freeze_bn:
            for module in self.student.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x = augment(batch[0], self.config.crop_padding, self.config.flip)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        student_logits = self.student(x)
        loss = distillation_loss(student_logits, teacher_logits, self.config.temperature)
        if self.config.label_weight and len(batch) > 1:
            loss = loss + self.config.label_weight * F.cross_entropy(student_logits, batch[1])
        self.log("distill/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.student.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=self.config.lr, momentum=self.config.momentum, nesterov=self.config.momentum > 0,
            weight_decay=self.config.weight_decay,
        )  # fmt: skip
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
