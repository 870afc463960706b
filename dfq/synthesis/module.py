"""The synthesis LightningModule: its only parameters are the input batch being optimized."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from dfq.data.augment import pad_crop
from dfq.models.normalization import Normalization
from dfq.speed import SpeedConfig, prepare, to_memory_format
from dfq.synthesis.bn_stats import BatchNormStatistics, batchnorm_layers
from dfq.synthesis.generators import (
    INITS,
    LAYER_WEIGHTINGS,
    LOSS_DRIVEN_SCHEDULES,
    OPTIMIZERS,
    SCHEDULES,
    STEP_LOSS,
    GeneratorConfig,
)
from dfq.synthesis.image import IMAGES
from dfq.synthesis.losses import BN_LOSSES, INPUT_LOSSES, LossContext, bn_kl_divergence, per_layer
from dfq.synthesis.priors import blur, gaussian_kernel, jitter, random_flip, swing


def initial_inputs(
    recipe: GeneratorConfig, normalization: Normalization, batch_size: int, generator: torch.Generator
) -> torch.Tensor:
    """The starting batch: the recipe's noise, scaled and shifted per channel, clamped to valid pixels."""
    channels = normalization.channels
    mean = recipe.channel_values(recipe.init_mean, channels, "init_mean")
    std = recipe.channel_values(recipe.init_std, channels, "init_std")
    noise = INITS[recipe.init]((batch_size, *normalization.shape), generator)
    return normalization.clamp_(noise * std + mean)


class TeacherRunner:
    """The frozen teacher as synthesis runs it, shared by every batch of a set: BN-statistics hooks
    (and the recipe's swing on strided convs) attached once (a compiled teacher is then compiled once,
    not per batch or per step) and the speed switches applied. `close` removes the hooks. The swing
    draws its offsets from `random`, which each batch sets to its own seeded generator."""

    def __init__(
        self,
        teacher: nn.Module,
        recipe: GeneratorConfig,
        model_name: str = "model",
        speed: SpeedConfig | None = None,
    ) -> None:
        self.module = teacher.eval().requires_grad_(False)
        self.speed = speed
        has_bn = bool(batchnorm_layers(teacher))
        self.bn_stats = (
            BatchNormStatistics(teacher, model_name, per_sample=recipe.uses_sample_statistics)
            if recipe.uses_batchnorm or has_bn
            else None
        )
        if self.bn_stats:
            self.bn_stats.__enter__()
            self.bn_stats.recording = False
        self.random = torch.Generator().manual_seed(recipe.seed)
        self.swing_hooks = [
            module.register_forward_pre_hook(lambda _m, args: (swing(args[0], recipe.swing, self.random),))
            for module in teacher.modules()
            if recipe.swing > 0 and isinstance(module, nn.Conv2d) and max(module.stride) > 1
        ]
        self.forward = prepare(teacher, speed)

    def __call__(self, x: torch.Tensor, record_bn: bool) -> torch.Tensor:
        """Teacher logits for `x`; BN input statistics land in `self.bn_stats.layers` when recorded."""
        if not self.bn_stats:
            return self.forward(x)
        self.bn_stats.clear()
        self.bn_stats.recording, self.bn_stats.keep = record_bn, True
        logits = self.forward(x)
        # checkpointed blocks re-run their hooks in the backward pass: they must compute (and save for
        # backward) what they did, but keeping those records would hold the recomputed activations
        self.bn_stats.keep = False
        return logits

    def close(self) -> None:
        if self.bn_stats:
            self.bn_stats.__exit__()
        for hook in self.swing_hooks:
            hook.remove()


class SynthesisModule(pl.LightningModule):
    """Optimizes one batch of inputs against a frozen teacher under a `GeneratorConfig` recipe: the
    pixels themselves, or GENIE-D's generator network and latents (`recipe.image`).

    The teacher stays in eval mode with gradients off for its weights. Where the teacher has
    BatchNorm layers, each layer's BNS divergence (KL, Haroush et al.) is logged beside the loss
    terms, whatever the recipe optimizes. `teacher` is a module, or a `TeacherRunner` shared by
    several batches (its owner closes it); a module gets a runner of its own, closed at teardown.
    """

    def __init__(
        self,
        teacher: nn.Module | TeacherRunner,
        normalization: Normalization,
        recipe: GeneratorConfig,
        batch_size: int,
        labels: torch.Tensor | None,
        seed: int,
        model_name: str = "model",
        batch_index: int = 0,
    ) -> None:
        super().__init__()
        self.owns_runner = not isinstance(teacher, TeacherRunner)
        self.runner = TeacherRunner(teacher, recipe, model_name) if self.owns_runner else teacher
        self.teacher = self.runner.module
        self.normalization = normalization
        self.recipe = recipe
        self.batch_index = batch_index
        self.random = torch.Generator().manual_seed(seed)
        self.runner.random = self.random

        def initial() -> torch.Tensor:
            inputs = initial_inputs(recipe, normalization, batch_size, self.random)
            return to_memory_format(inputs, self.runner.speed)

        self.image = IMAGES[recipe.image](
            initial,
            (batch_size, *normalization.shape),
            seed,
            recipe.latent_dim,
        )
        self.register_buffer("labels", labels)
        low, high = normalization.bounds(torch.zeros(()))  # float32 bounds, shaped (1, C, 1, 1)
        self.register_buffer("low", low, persistent=False)
        self.register_buffer("high", high, persistent=False)
        self.bn_stats = self.runner.bn_stats
        layer_count = len(self.bn_stats.modules) if self.bn_stats else 0
        weights = LAYER_WEIGHTINGS[recipe.layer_weighting](layer_count)
        if layer_count:
            weights[0] *= recipe.first_bn_multiplier
        self.register_buffer("layer_weights", weights)
        self.blur_kernel = (
            gaussian_kernel(recipe.blur_sigma, normalization.channels) if recipe.blur_sigma > 0 else None
        )

    def train(self, mode: bool = True) -> SynthesisModule:
        """Lightning switches modules to training mode; the teacher must stay in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def teardown(self, stage: str) -> None:
        if self.owns_runner:
            self.runner.close()

    def losses(
        self, record_bn: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Total loss, each weighted term, and each BN layer's value of each BN term (unweighted)."""
        x = pad_crop(self.image(), self.recipe.pad_crop, self.low, self.random)
        x = random_flip(jitter(x, self.recipe.jitter, self.random), self.recipe.flip, self.random)
        record_bn = record_bn or self.recipe.uses_batchnorm
        logits = self.runner(x, record_bn)
        bn = self.bn_stats.layers if (record_bn and self.bn_stats) else []
        ctx = LossContext(x, logits, self.labels, bn, self.recipe.target_probability)
        terms, layers = {}, {}
        for name, weight in self.recipe.active_losses.items():
            if name in BN_LOSSES:
                values = per_layer(name, ctx)
                layers.update({f"{name}/{stat.name}": v for stat, v in zip(ctx.bn, values, strict=True)})
                terms[name] = weight * (values * self.layer_weights).sum()
            else:
                terms[name] = weight * INPUT_LOSSES[name](ctx)
        total = sum(terms.values()) if terms else x.sum() * 0
        return total, terms, layers

    def is_logging_step(self, step: int) -> bool:
        every = self.recipe.log_every
        return bool(every) and (step % every == 0 or step == self.recipe.iterations - 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        logging = self.logger is not None and self.is_logging_step(batch_idx)
        total, terms, layers = self.losses(record_bn=logging)
        self.last_terms = {"loss": total.detach()} | {k: v.detach() for k, v in terms.items()}  # for guards
        if self.recipe.schedule in LOSS_DRIVEN_SCHEDULES:
            self.log(STEP_LOSS, total.detach(), on_step=True, on_epoch=False, logger=False)
        if logging:
            metrics = {k: float(v) for k, v in self.step_metrics(total, terms, layers).items()}
            self.logger.log_metrics(metrics, step=self.batch_index * self.recipe.iterations + batch_idx)
        return total

    @torch.no_grad()
    def step_metrics(
        self, total: torch.Tensor, terms: dict[str, torch.Tensor], layers: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """Per-term losses, per-layer values of the BN terms, and every layer's BNS divergence."""
        metrics: dict[str, Any] = {
            "synthesis/loss": total.detach(),
            "synthesis/batch": float(self.batch_index),
        }
        metrics |= {f"synthesis/{k}": v.detach() for k, v in terms.items()}
        metrics |= {f"bn_loss/{k}": v.detach() for k, v in layers.items()}
        if self.bn_stats and self.bn_stats.layers:
            divergence = {f"bn_divergence/{s.name}": bn_kl_divergence(s) for s in self.bn_stats.layers}
            metrics |= divergence
            metrics["synthesis/bn_divergence_mean"] = torch.stack(list(divergence.values())).mean()
        return metrics

    @property
    def inputs(self) -> torch.Tensor:
        """The pixels being optimized (image=pixels; callers may write into them)."""
        return self.image.pixels

    @torch.no_grad()
    def samples(self) -> torch.Tensor:
        """The batch as it stands, in the valid pixel range (a generator's images are clamped here; its
        BatchNorm layers standardize the batch itself, as in training)."""
        self.image.train()
        return self.image().clamp(self.low, self.high)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer's update, low-passed by a Gaussian blur when the recipe asks for one."""
        before = self.inputs.detach().clone() if self.blur_kernel is not None else None
        super().optimizer_step(*args, **kwargs)
        if before is not None:
            with torch.no_grad():
                self.inputs.copy_(before + blur(self.inputs - before, self.blur_kernel))

    def on_train_batch_end(self, *args: Any) -> None:
        if self.image.clamp_each_step:
            with torch.no_grad():
                self.inputs.clamp_(self.low, self.high)

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.image.parameter_groups(self.recipe.lr, self.recipe.network_lr)
        optimizer = OPTIMIZERS[self.recipe.optimizer](groups, self.recipe.lr)
        return {
            "optimizer": optimizer,
            "lr_scheduler": SCHEDULES[self.recipe.schedule](optimizer, self.recipe.iterations),
        }
