"""Distillation's loss terms: KL to the teacher, cross-entropy to the synthesis labels (filtered as PLF
or SynQ filter them), SynQ's class-activation-map alignment and low-pass view, HAST's hard samples.

Every term but the KL is off by default; `FinetuneConfig` holds their weights, `TERMS` the functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F
from torch import nn

from dfq.quant.policy import graph_order

if TYPE_CHECKING:  # the config holds these terms' options; its module imports this one
    from dfq.distill.module import FinetuneConfig

_LAST_CONVS: WeakKeyDictionary[nn.Module, nn.Module] = WeakKeyDictionary()


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) of the softened distributions, scaled by T^2 (Hinton et al., 2015)."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2


def keep_all(teacher_logits: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """No filtering: every sample's label is used."""
    return torch.ones_like(labels, dtype=torch.bool)


def keep_reliable(teacher_logits: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """PLF (Fan et al., CVPR 2024): keep a label where the teacher's prediction is reliable, its
    self-entropy over log(classes) at most `threshold`."""
    log_p = F.log_softmax(teacher_logits, dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1) / math.log(teacher_logits.shape[1])
    return entropy <= threshold


def keep_easy(teacher_logits: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """SynQ (Kim et al., ICLR 2025): keep a label where the sample is easy, its difficulty
    1 - p_teacher(label) below `threshold` (SynQ's tau, 0.5); hard samples learn from the KL alone."""
    p_label = F.softmax(teacher_logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return 1.0 - p_label < threshold


LABEL_FILTERS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "none": keep_all,
    "entropy": keep_reliable,
    "difficulty": keep_easy,
}


def filtered_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    kind: str,
    threshold: float,
) -> torch.Tensor:
    """Cross-entropy to the labels the filter `kind` keeps, summed and divided by the whole batch (so a
    batch of mostly unreliable labels pulls less, as in SynQ's code)."""
    keep = LABEL_FILTERS[kind](teacher_logits.detach(), labels, threshold)
    per_sample = F.cross_entropy(student_logits, labels, reduction="none")
    return (per_sample * keep).sum() / len(labels)


def low_pass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """SynQ's Gaussian low-pass filter: spectrum times exp(-D^2 / (2 cutoff^2)), D the distance in
    frequency bins from the centred zero frequency. Linear and keeping the mean, so it commutes with
    the per-channel input normalization."""
    height, width = x.shape[-2:]
    u = torch.arange(height, device=x.device, dtype=x.dtype) - height // 2
    v = torch.arange(width, device=x.device, dtype=x.dtype) - width // 2
    gain = torch.exp(-(u[:, None] ** 2 + v[None, :] ** 2) / (2 * cutoff**2))
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)) * gain
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real


def last_conv(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The last Conv2d the forward pass runs (graph order, not registration order), found once per model."""
    if model not in _LAST_CONVS:
        names = graph_order(model, example[:1], (nn.Conv2d,))
        if not names:
            raise ValueError(f"finetune.cam_weight needs a Conv2d in {type(model).__name__}; it has none")
        _LAST_CONVS[model] = model.get_submodule(names[-1])
    return _LAST_CONVS[model]


def grad_cam(layer_output: torch.Tensor, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017) of each sample's own top class, as SynQ computes it: channel
    weights from the spatial mean of the gradient (clamped at 1e-10, taken as constants), ReLU of the
    weighted sum, resized to `size`, min-max normalized per sample. Differentiable in `layer_output`."""
    score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    (gradient,) = torch.autograd.grad(score, layer_output, retain_graph=True)
    weights = gradient.mean(dim=(2, 3), keepdim=True).clamp(min=1e-10)
    cam = F.relu((weights * layer_output).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False).flatten(1)
    low, high = cam.min(dim=1, keepdim=True).values, cam.max(dim=1, keepdim=True).values
    return (cam - low) / (high - low + 1e-10)


@contextmanager
def capture_output(layer: nn.Module, leaf: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collect `layer`'s outputs while inside; with `leaf`, each is replaced by a detached copy that
    requires grad, so a frozen network's Grad-CAM needs a graph only from the layer on."""

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.detach().requires_grad_(True) if leaf else output
        captured.append(output)
        return output

    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def forward_with_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of `model` on `x` at `layer`, from a forward pass of its own (grad enabled even for a
    frozen teacher)."""
    with capture_output(layer) as captured, torch.enable_grad():
        logits = model(x if x.requires_grad else x.detach().requires_grad_(True))
    return grad_cam(captured[-1], logits, tuple(x.shape[-2:]))


@dataclass
class LossInputs:
    """One training batch as the terms see it: inputs, labels (or None), both networks and logits."""

    x: torch.Tensor
    labels: torch.Tensor | None
    student: nn.Module
    teacher: nn.Module
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    mix: tuple[torch.Tensor, float] | None = None  # mixup's permutation and weight, when mixed
    # (student, teacher) last-conv outputs and logits, captured in the forward passes above, so that
    # the CAM term needs no passes of its own (None: it runs them; the teacher's logits then detached)
    cam_inputs: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None


def kl_term(batch: LossInputs, config: FinetuneConfig) -> torch.Tensor:
    """KL to the teacher at the configured temperature."""
    return distillation_loss(batch.student_logits, batch.teacher_logits, config.temperature)


def label_term(batch: LossInputs, config: FinetuneConfig) -> torch.Tensor:
    """Cross-entropy to the synthesis labels (filtered); under mixup, mixed as the inputs are."""
    if batch.labels is None:
        return batch.student_logits.new_zeros(())

    def cross_entropy(labels: torch.Tensor) -> torch.Tensor:
        return filtered_cross_entropy(
            batch.student_logits, batch.teacher_logits, labels, config.label_filter, config.label_threshold
        )

    if batch.mix is None:
        return cross_entropy(batch.labels)
    perm, lam = batch.mix
    return lam * cross_entropy(batch.labels) + (1.0 - lam) * cross_entropy(batch.labels[perm])


def cam_term(batch: LossInputs, config: FinetuneConfig) -> torch.Tensor:
    """SynQ's alignment: MSE between the student's and the teacher's Grad-CAM at their last conv."""
    size = tuple(batch.x.shape[-2:])
    if batch.cam_inputs is not None:
        (student_out, student_logits), (teacher_out, teacher_logits) = batch.cam_inputs
        student_cam = grad_cam(student_out, student_logits, size)
        teacher_cam = grad_cam(teacher_out, teacher_logits, size)
    else:
        student_layer, teacher_layer = last_conv(batch.student, batch.x), last_conv(batch.teacher, batch.x)
        student_cam = forward_with_cam(batch.student, student_layer, batch.x)
        teacher_cam = forward_with_cam(batch.teacher, teacher_layer, batch.x)
    return F.mse_loss(student_cam, teacher_cam.detach())


# name -> (term, the FinetuneConfig field holding its weight); a term with weight 0 is not computed
TERMS: dict[str, tuple[Callable[[LossInputs, FinetuneConfig], torch.Tensor], str]] = {
    "kl": (kl_term, "distill_weight"),
    "label": (label_term, "label_weight"),
    "cam": (cam_term, "cam_weight"),
}


def loss_terms(
    batch: LossInputs, config: FinetuneConfig, skip: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Each active term (nonzero weight, not in `skip`), weighted by its `FinetuneConfig` field."""
    weighted = {}
    for name, (term, weight_field) in TERMS.items():
        weight = getattr(config, weight_field)
        if weight and name not in skip:
            weighted[name] = weight * term(batch, config)
    return weighted


def hard_samples(x: torch.Tensor, loss: torch.Tensor, step: float) -> torch.Tensor:
    """HAST (Li et al., CVPR 2023): harder copies of the inputs, one signed-gradient step of size `step`
    up the student's loss (`x` must be part of `loss`'s graph); SynQ keeps the same branch."""
    (gradient,) = torch.autograd.grad(loss, x, retain_graph=True)
    return (x + step * gradient.sign()).detach()
