"""The synthesis LightningModule: its only parameters are the input batch being optimized."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from dfq.models.normalization import Normalization
from dfq.synthesis.bn_stats import BatchNormStatistics
from dfq.synthesis.generators import OPTIMIZERS, SCHEDULES, GeneratorConfig
from dfq.synthesis.losses import BN_LOSSES, INPUT_LOSSES, LossContext, per_layer
from dfq.synthesis.priors import blur, gaussian_kernel, jitter, random_flip


class SynthesisModule(pl.LightningModule):
    """Optimizes one batch of inputs against a frozen teacher under a `GeneratorConfig` recipe."""

    def __init__(
        self,
        teacher: nn.Module,
        normalization: Normalization,
        recipe: GeneratorConfig,
        batch_size: int,
        labels: torch.Tensor | None,
        seed: int,
        model_name: str = "model",
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.normalization = normalization
        self.recipe = recipe
        self.random = torch.Generator().manual_seed(seed)
        noise = torch.randn((batch_size, *normalization.shape), generator=self.random)
        self.inputs = nn.Parameter(normalization.clamp_(noise * recipe.init_std + recipe.init_mean))
        self.register_buffer("labels", labels)
        self.bn_stats = BatchNormStatistics(teacher, model_name) if recipe.uses_batchnorm else None
        layer_count = len(self.bn_stats.modules) if self.bn_stats else 0
        weights = torch.ones(layer_count)
        if layer_count:
            weights[0] = recipe.first_bn_multiplier
        self.register_buffer("layer_weights", weights)
        if recipe.blur_sigma > 0:
            kernel = gaussian_kernel(recipe.blur_sigma, normalization.channels)
            self.inputs.register_hook(lambda grad: blur(grad, kernel))

    def train(self, mode: bool = True) -> SynthesisModule:
        """Lightning switches modules to training mode; the teacher must stay in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def losses(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Total loss, each weighted term, and each BN layer's divergence, for the current inputs."""
        x = random_flip(jitter(self.inputs, self.recipe.jitter, self.random), self.recipe.flip, self.random)
        if self.bn_stats:
            self.bn_stats.clear()
            with self.bn_stats:
                logits = self.teacher(x)
        else:
            logits = self.teacher(x)
        ctx = LossContext(x, logits, self.labels, self.bn_stats.layers if self.bn_stats else [])
        terms, layers = {}, {}
        for name, weight in self.recipe.losses.items():
            if name in BN_LOSSES:
                values = per_layer(name, ctx)
                layers.update({f"{name}/{stat.name}": v for stat, v in zip(ctx.bn, values, strict=True)})
                terms[name] = weight * (values * self.layer_weights).sum()
            else:
                terms[name] = weight * INPUT_LOSSES[name](ctx)
        total = sum(terms.values()) if terms else self.inputs.sum() * 0
        return total, terms, layers

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        total, terms, layers = self.losses()
        every = self.recipe.log_every
        if every and (batch_idx % every == 0 or batch_idx == self.recipe.iterations - 1):
            metrics = {"synthesis/loss": total.detach()} | {
                f"synthesis/{k}": v.detach() for k, v in terms.items()
            }
            metrics |= {f"bn_divergence/{k}": v.detach() for k, v in layers.items()}
            self.log_dict(metrics, on_step=True, on_epoch=False)
        return total

    def on_train_batch_end(self, *args) -> None:
        with torch.no_grad():
            self.normalization.clamp_(self.inputs)

    def configure_optimizers(self):
        optimizer = OPTIMIZERS[self.recipe.optimizer]([self.inputs], self.recipe.lr)
        factor = SCHEDULES[self.recipe.schedule](self.recipe.iterations)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
