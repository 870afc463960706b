"""The model zoo: every conf/model entry builds offline, published weights load, missing ones explain
themselves, and mismatched checkpoints name their keys. Nothing here downloads (DFQ_OFFLINE=1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from dfq.config import register_configs
from dfq.data.npz import NpzDataset
from dfq.evaluate import top1
from dfq.models.cifar_resnet import cifar_resnet
from dfq.models.fetch import cache_path
from dfq.models.hub import UnknownModelError, timm_model, torchvision_model
from dfq.models.load import CheckpointError, build_model, instantiate_arch
from dfq.models.wrn import wide_resnet

MODEL_CONF = Path(__file__).resolve().parents[2] / "dfq" / "conf" / "model"

# Overrides that build each entry with random weights and no file at all.
RANDOM_WEIGHTS = {
    "digits_cnn": [],
    "resnet20": [],
    "resnet32": [],
    "resnet44": [],
    "resnet56": [],
    "resnet110": [],
    "wrn28_10": [],
    "resnet18": ["model.arch.weights=null"],
    "resnet50": ["model.arch.weights=null"],
    "mobilenet_v2": ["model.arch.weights=null"],
    "densenet121": ["model.arch.weights=null"],
    "torchvision": ["model.name=squeezenet1_1", "model.arch.weights=null"],
    "timm": ["model.name=resnet10t", "model.arch.pretrained=false"],
    "custom": [
        "model.arch._target_=dfq.models.digits.DigitsCNN",
        "+model.arch.widths=[8,8]",
        "model.input.mean=[0.5]",
        "model.input.std=[0.5]",
        "model.input.image_size=8",
        "model.input.num_classes=10",
    ],
}
# Published parameter counts (millions): He et al. 2016 / akamaster for CIFAR ResNets, WRN paper.
PARAMETERS_M = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7}
PARAMETERS_M |= {
    "wrn28_10": 36.5,
    "resnet18": 11.7,
    "resnet50": 25.6,
    "densenet121": 8.0,
    "mobilenet_v2": 3.5,
}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No downloads, and empty weight caches, whatever this machine holds."""
    import huggingface_hub.constants

    monkeypatch.setenv("DFQ_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


def model_config(name: str, *overrides: str) -> DictConfig:
    register_configs()
    with initialize_config_module("dfq.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}", *overrides])
    return cfg.model


def test_every_entry_is_covered():
    assert sorted(path.stem for path in MODEL_CONF.glob("*.yaml")) == sorted(RANDOM_WEIGHTS)


@pytest.mark.parametrize("name", sorted(RANDOM_WEIGHTS))
def test_entry_builds_offline_with_random_weights(name):
    cfg = model_config(name, *RANDOM_WEIGHTS[name])
    module = instantiate_arch(cfg.arch).eval()
    size, channels = cfg.input.image_size, len(cfg.input.mean)
    assert len(cfg.input.std) == channels
    with torch.no_grad():
        logits = module(torch.randn(1, channels, size, size))
    assert logits.shape == (1, cfg.input.num_classes)
    if name in PARAMETERS_M:
        count = sum(p.numel() for p in module.parameters()) / 1e6
        assert count == pytest.approx(PARAMETERS_M[name], rel=0.05)


@pytest.mark.parametrize(("name", "floor"), [("resnet20", 89.0), ("resnet44", 90.0)])
def test_shared_cifar_resnets_load_and_reach_their_accuracy(shared_dir, name, floor):
    cfg = model_config(name, f"paths.shared_dir={shared_dir}")
    entry = build_model(cfg)
    assert not entry.module.training
    data = NpzDataset(test=str(shared_dir / "data" / "cifar10" / "test.npz"))
    test = data.split("test", entry.normalization)
    subset = torch.utils.data.Subset(test, range(500))
    assert top1(entry.module, subset) >= floor  # 91.0 / 93.0 measured; 91.73 / 93.10 on all 10,000


@pytest.mark.parametrize(
    ("name", "missing_file", "instead"),
    [
        ("resnet18", "resnet18-f37072fd.pth", "model.arch.weights=null model.checkpoint="),
        ("densenet121", "densenet121-a639ec97.pth", "model.arch.weights=null model.checkpoint="),
        ("resnet32", "resnet32-d509ac18.th", "model.checkpoint=/path/to/resnet32-d509ac18.th"),
        ("resnet110", "resnet110-1d1ed7c2.th", "model.checkpoint=/path/to/resnet110-1d1ed7c2.th"),
    ],
)
def test_offline_entries_name_the_missing_file(tmp_path, name, missing_file, instead):
    with pytest.raises(CheckpointError) as error:
        build_model(model_config(name))
    message = str(error.value)
    assert missing_file in message and instead in message and "DFQ_OFFLINE" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / missing_file) in message


def test_offline_timm_entry_names_the_repository():
    with pytest.raises(CheckpointError, match=r"timm/resnet18\.a1_in1k.*model\.arch\.pretrained=false"):
        build_model(model_config("timm", "model.name=resnet18"))


def test_unknown_hub_names_are_user_errors():
    with pytest.raises(UnknownModelError, match="resnet19"):
        torchvision_model("resnet19")
    with pytest.raises(UnknownModelError, match="IMAGENET9K"):
        torchvision_model("resnet18", "IMAGENET9K")
    with pytest.raises(UnknownModelError, match="not a timm model"):
        timm_model("no_such_net_42")


def test_torchvision_weights_come_from_the_cache(tmp_path):
    saved = torchvision_model("resnet18").state_dict()
    target = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    torch.save(saved, target)
    entry = build_model(model_config("resnet18"))
    assert torch.equal(entry.module.state_dict()["layer4.1.conv2.weight"], saved["layer4.1.conv2.weight"])


def test_url_checkpoint_comes_from_the_cache():
    url = model_config("resnet56").checkpoint
    saved = cifar_resnet(56).state_dict()
    cache_path(url).parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.items()}}, cache_path(url))
    entry = build_model(model_config("resnet56"))
    assert torch.equal(entry.module.state_dict()["layer3.8.conv2.weight"], saved["layer3.8.conv2.weight"])


def test_timm_weights_come_from_the_hugging_face_cache(tmp_path):
    from safetensors.torch import save_file

    saved = timm_model("resnet10t", pretrained=False).state_dict()
    snapshot = tmp_path / "hf" / "models--timm--resnet10t.c3_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    save_file({k: v.contiguous() for k, v in saved.items()}, str(snapshot / "model.safetensors"))
    module = timm_model("resnet10t.c3_in1k")
    assert torch.equal(module.state_dict()["fc.weight"], saved["fc.weight"])


def test_custom_module_loads_its_checkpoint(tmp_path):
    from dfq.models.digits import DigitsCNN

    saved = DigitsCNN(widths=(8, 8)).state_dict()
    torch.save({"model": saved}, tmp_path / "mine.pt")
    entry = build_model(
        model_config("custom", *RANDOM_WEIGHTS["custom"], f"model.checkpoint={tmp_path / 'mine.pt'}")
    )
    assert torch.equal(entry.module.fc.weight, saved["fc.weight"])
    assert entry.normalization.shape == (1, 8, 8)


def test_wrong_keys_are_named(tmp_path):
    state = cifar_resnet(20).state_dict()
    state["fc.weight"] = state.pop("linear.weight")
    torch.save(state, tmp_path / "renamed.th")
    with pytest.raises(
        CheckpointError, match=r"1 missing keys \(first: \['linear\.weight'\]\).*'fc\.weight'"
    ):
        build_model(model_config("resnet20", f"model.checkpoint={tmp_path / 'renamed.th'}"))


def test_missing_local_checkpoint_says_how_to_pass_one(tmp_path):
    with pytest.raises(CheckpointError, match="model.checkpoint="):
        build_model(model_config("wrn28_10", f"model.checkpoint={tmp_path / 'absent.pt'}"))


def test_wide_resnet_uses_the_published_module_names():
    keys = wide_resnet(28, 10).state_dict()
    assert keys["conv1.weight"].shape == (16, 3, 3, 3)
    assert keys["block1.layer.0.convShortcut.weight"].shape == (160, 16, 1, 1)
    assert "block1.layer.1.convShortcut.weight" not in keys
    assert keys["block3.layer.3.conv2.weight"].shape == (640, 640, 3, 3)
    assert keys["bn1.running_var"].shape == (640,) and keys["fc.weight"].shape == (10, 640)
    assert sum(name.endswith("conv2.weight") for name in keys) == 12  # (28 - 4) / 6 = 4 blocks x 3 stages


def test_the_default_teacher_ships_and_others_are_trained(tmp_path, monkeypatch):
    from dfq.models import digits

    trained = []
    monkeypatch.setattr(digits, "train_teacher", lambda model, data, path, **options: trained.append(options))
    model = digits.DigitsCNN()
    digits.shipped_or_trained(model, None, tmp_path / "digits_cnn_32px.pt", epochs=40)
    copied = torch.load(tmp_path / "digits_cnn_32px.pt", weights_only=True)["state_dict"]
    shipped = torch.load(digits.SHIPPED / "digits_cnn_32px.pt", weights_only=True)["state_dict"]
    assert trained == [] and all(torch.equal(copied[k], shipped[k]) for k in shipped)
    digits.shipped_or_trained(model, None, tmp_path / "digits_cnn_32px.pt", epochs=3)  # another recipe
    digits.shipped_or_trained(model, None, tmp_path / "digits_cnn_8px.pt", epochs=40)  # another size
    assert trained == [{"epochs": 3}, {"epochs": 40}]
