"""BatchNorm handling around quantization: fold BN into the conv/linear that feeds it, re-estimate BN.

Conv-BN pairs come from the traced graph (which BN consumes which layer's output, and nothing else
does), never from module order or channel counts.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, TensorDataset

from dfq.errors import UserError
from dfq.models.submodules import set_submodule

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class FoldingError(UserError):
    """The model's graph could not be traced to find which BatchNorm follows which layer."""


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer name, BN name) for every BN whose only input is a conv/linear output used by it alone."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as error:  # fx raises many types on untraceable Python control flow
        raise FoldingError(
            f"cannot fold BatchNorm in {type(model).__name__}: torch.fx could not trace it ({error})"
        ) from error
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
            continue
        source = node.args[0]
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], FOLDABLE)
            and len(source.users) == 1
        ):
            pairs.append((source.target, node.target))
    return pairs


@torch.no_grad()
def fold_into(layer: nn.Module, bn: _BatchNorm) -> None:
    """Absorb `bn` (eval-mode statistics) into `layer`: W' = W g/sqrt(v+e), b' = (b-m) g/sqrt(v+e) + beta."""
    if bn.running_var is None:
        raise FoldingError(f"cannot fold {type(bn).__name__} without running statistics")
    wide = torch.float64  # fold in double precision, store in the layer's own dtype
    mean, var = bn.running_mean.to(wide), bn.running_var.to(wide)
    gamma = bn.weight.to(wide) if bn.affine else torch.ones_like(var)
    beta = bn.bias.to(wide) if bn.affine else torch.zeros_like(mean)
    factor = gamma / torch.sqrt(var + bn.eps)
    bias = layer.bias.to(wide) if layer.bias is not None else torch.zeros_like(mean)
    shape = [-1] + [1] * (layer.weight.dim() - 1)
    layer.weight.copy_(layer.weight.to(wide) * factor.reshape(shape))
    folded_bias = ((bias - mean) * factor + beta).to(layer.weight.dtype)
    layer.bias = nn.Parameter(folded_bias, requires_grad=layer.weight.requires_grad)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` with every BN that directly follows a conv/linear folded into it (BN -> Identity).

    The original is left untouched (synthesis needs its BatchNorm statistics). In eval mode the copy's
    outputs equal the original's up to float rounding.
    """
    folded = copy.deepcopy(model)
    for layer_name, bn_name in foldable_pairs(folded):
        fold_into(folded.get_submodule(layer_name), folded.get_submodule(bn_name))
        set_submodule(folded, bn_name, nn.Identity())
    return folded


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, samples: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """Recompute every BN's running mean/variance as the average over the batches of `samples`, in place.

    The rest of the model runs in eval mode (a quantized student keeps fake-quantizing), so the
    statistics are those the BN layers see in the model as it is now. Returns `model`, in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    model.eval()
    momenta = {bn: bn.momentum for bn in bns}
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: the plain mean over all batches
        bn.train()
    try:
        for (batch,) in DataLoader(TensorDataset(samples), batch_size=batch_size):
            model(batch)
    finally:
        for bn in bns:
            bn.momentum = momenta[bn]
            bn.eval()
    return model
