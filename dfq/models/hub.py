"""torchvision and timm classifiers by name, with their published weights fetched the way each library
does, but with a clear error, naming the file and the alternatives, when they cannot be had offline."""

from __future__ import annotations

import logging
from pathlib import Path

import torchvision
from torch import nn

from dfq.errors import UserError
from dfq.models.errors import CheckpointError
from dfq.models.fetch import cache_path, fetch_checkpoint, offline

log = logging.getLogger(__name__)

LOCAL_INSTEAD = "{key}={value} model.checkpoint=/path/to/a/state_dict.pth"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class UnknownModelError(UserError):
    """A model name that the library does not provide."""


def torchvision_names() -> list[str]:
    """The classification models torchvision builds by name."""
    return torchvision.models.list_models(module=torchvision.models)


def torchvision_weights(name: str, weights: str) -> torchvision.models.WeightsEnum:
    """The weights enum member `weights` (e.g. IMAGENET1K_V1, DEFAULT) of torchvision model `name`."""
    options = torchvision.models.get_model_weights(name)
    if weights not in options.__members__:
        raise UnknownModelError(
            f"model.arch.weights={weights!r} is not a weight set of {name}; "
            f"valid: {list(options.__members__)}"
        )
    return options[weights]


def torchvision_model(name: str, weights: str | None = None, num_classes: int | None = None) -> nn.Module:
    """torchvision classifier `name`, with the named weights (null: random initialization).

    The weight file comes from the torch hub cache, or is downloaded into it (`dfq.models.fetch`).
    """
    if name not in torchvision_names():
        raise UnknownModelError(
            f"model.arch.name={name!r} is not a torchvision classifier; see torchvision.models.list_models()"
        )
    if weights is None:
        options = {"num_classes": num_classes} if num_classes else {}
        return torchvision.models.get_model(name, weights=None, **options)
    member = torchvision_weights(name, weights)
    categories = len(member.meta["categories"])
    if num_classes not in (None, categories):
        raise UserError(
            f"model.arch.num_classes={num_classes} but {name} weights {weights} have {categories} classes"
        )
    fetch_checkpoint(member.url, LOCAL_INSTEAD.format(key="model.arch.weights", value="null"))
    return torchvision.models.get_model(name, weights=member)


def cached_timm_file(config) -> Path | None:
    """A weight file of a timm pretrained config already on this machine (HF hub or torch hub cache)."""
    if config.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = config.hf_hub_id.partition("@")
        for filename in (config.hf_hub_filename, *HF_WEIGHT_FILES):
            found = filename and try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
    if config.url and cache_path(config.url).is_file():
        return cache_path(config.url)
    return None


def timm_weight_source(config) -> str:
    """Where timm would fetch the weights of a pretrained config from, for error messages."""
    if config.hf_hub_id:
        return f"the Hugging Face hub repository {config.hf_hub_id} (file {HF_WEIGHT_FILES[0]})"
    return str(config.url)


def timm_model(name: str, pretrained: bool = True, num_classes: int | None = None) -> nn.Module:
    """timm model `name` (`architecture.tag` picks one weight set), with its pretrained weights when asked."""
    import timm

    if not timm.is_model(name.partition(".")[0]):
        raise UnknownModelError(
            f"model.arch.name={name!r} is not a timm model; see timm.list_models('*pattern*')"
        )
    options = {"num_classes": num_classes} if num_classes else {}
    module = timm_pretrained(name, options) if pretrained else timm.create_model(name, **options)
    if pretrained:
        config = getattr(module, "pretrained_cfg", {})
        expected = {key: config[key] for key in ("input_size", "mean", "std", "num_classes") if key in config}
        log.info("timm %s was trained on inputs %s; model.input must match", name, expected)
    return module


def timm_pretrained(name: str, options: dict[str, int]) -> nn.Module:
    """timm model `name` with weights from the local cache, else downloaded unless offline."""
    import timm

    config = timm.models.get_pretrained_cfg(name)
    if config is None:
        raise CheckpointError(f"timm has no pretrained weights for {name}; set model.arch.pretrained=false")
    local = cached_timm_file(config)
    if local is not None:
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": str(local)}, **options
        )
    source = timm_weight_source(config)
    instead = LOCAL_INSTEAD.format(key="model.arch.pretrained", value="false")
    if offline():
        raise CheckpointError(
            f"timm weights of {name} are not in the local cache and DFQ_OFFLINE is set: fetch them once "
            f"from {source} on a machine with a network, or pass {instead}"
        )
    try:
        return timm.create_model(name, pretrained=True, **options)
    except Exception as error:  # network and hub errors come in many types; the name was checked above
        raise CheckpointError(
            f"could not fetch timm weights of {name} from {source} ({error}); pass {instead}"
        ) from error
