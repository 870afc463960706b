"""Every config file composes and validates; typos and out-of-range values fail with clear messages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from dfq.config import (
    ConfigError,
    RunConfig,
    check_key,
    check_overrides,
    ranged_values,
    register_configs,
    validate,
)
from dfq.ranges import Range

CONF = Path(__file__).resolve().parents[1] / "dfq" / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))
OPTIONS = [(group, f.stem) for group in GROUPS for f in sorted((CONF / group).glob("*.yaml"))]
NEEDED = {"mixed_precision/saved": ["mixed_precision.path=widths.yaml"]}  # options with a value to set

register_configs()


def compose_run(*overrides: str):
    with initialize_config_module("dfq.conf", version_base="1.3"):
        return compose("config", overrides=["paths.output_dir=/tmp/dfq-test", *overrides])


def test_top_level_conf_is_the_package_conf():
    top = CONF.parents[1] / "conf"
    assert top.resolve() == CONF.resolve()
    assert (CONF / "config.yaml").is_file()


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}/{o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group: str, option: str):
    cfg = compose_run(f"{group}={option}", *NEEDED.get(f"{group}/{option}", []))
    config = validate(cfg)
    assert isinstance(config, RunConfig)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_every_group_has_options():
    for group in ("model", "dataset", "generator", "quant", "finetune", "trainer", "logger", "experiment"):
        assert (CONF / group).is_dir(), group
    assert {"bn_stats", "gaussian", "inception", "real"} <= {o for g, o in OPTIONS if g == "generator"}


def test_typo_in_key_names_key_and_valid_keys():
    with pytest.raises(ConfigError, match=r"quant\.w_bit.*did you mean 'w_bits'.*a_bits"):
        check_key("quant.w_bit")
    with pytest.raises(ConfigError, match="granularity"):
        check_overrides(["-m", "quant.weight.granularty=per_tensor,per_channel"])
    check_overrides(["quant.w_bits=4", "model.arch.depth=32", "+extra=1", "generator=gaussian"])


def test_an_option_left_unset_is_named():
    with pytest.raises(ConfigError, match="mixed_precision.path"):
        validate(compose_run("mixed_precision=saved"))


def test_hydra_rejects_unknown_key_at_composition():
    with pytest.raises(Exception, match="w_bit"):
        compose_run("quant.w_bit=4")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("quant.w_bits=0", r"quant\.w_bits=0 is out of range; valid: 2 to 8, or 16/32"),
        ("quant.a_bits=12", r"quant\.a_bits=12 is out of range"),
        ("generator.num_samples=0", r"generator\.num_samples=0 is out of range; valid: >= 1"),
        ("generator.batch_size=-4", r"generator\.batch_size=-4 is out of range"),
        ("generator.lr=-1", r"generator\.lr=-1\.0 is out of range; valid: > 0"),
        ("seed=-1", r"^seed=-1 is out of range; valid: in \[0, 4294967295\]"),
        ("compare.real.num_samples=0", r"compare\.real\.num_samples=0 is out of range"),
        ("quant.weight.bits=1", r"quant\.weight\.bits=1 is out of range; valid: 2 to 8"),
        ("generator.optimizer=lbfgs", r"generator\.optimizer='lbfgs' is invalid; expected one of"),
        ("quant.placement=everywhere", r"quant\.placement='everywhere' is invalid"),
        ("finetune.temperature=0", r"finetune\.temperature=0"),
    ],
)
def test_out_of_range_value_fails_before_work(override: str, message: str):
    cfg = compose_run(override)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


DEFAULT = compose_run()
RANGED = [(key, valid) for key, valid, _ in ranged_values(DEFAULT, RunConfig)]


def test_the_schema_walk_finds_every_group():
    groups = {key.split(".")[0] for key, _ in RANGED}
    assert {"generator", "compare", "quant", "calibrate", "finetune", "evaluate", "model", "seed"} <= groups
    assert len(RANGED) > 40


@pytest.mark.parametrize(("key", "valid"), RANGED, ids=[key for key, _ in RANGED])
def test_every_ranged_field_rejects_a_value_outside_its_range(key: str, valid: Range):
    bad = valid.outside()
    assert bad not in valid
    cfg = copy.deepcopy(DEFAULT)  # as composing `key=bad` gives, without composing once per key
    OmegaConf.update(cfg, key, bad)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    message = str(error.value)
    assert message.startswith(f"{key}=") and "\n" not in message
    assert message.endswith(f"is out of range; valid: {valid.describe()}")


def test_slurm_launcher_gives_one_task_per_device_of_the_ddp_trainer():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs dfq[cluster]")
    with initialize_config_module("dfq.conf", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["paths.output_dir=/tmp/x", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"],
            return_hydra_config=True,
        )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == 4 and launcher["nodes"] == 1


def test_runs_started_in_the_same_second_get_their_own_folders():
    def folders():
        with initialize_config_module("dfq.conf", version_base="1.3"):
            cfg = compose("config", overrides=["paths.output_dir=/tmp/x"], return_hydra_config=True)
        return str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)

    first, second = folders(), folders()  # well within one second of each other
    assert first[0] != second[0] and first[1] != second[1]
    assert first[1].startswith("outputs/run/multiruns/")


@pytest.mark.parametrize(
    ("overrides", "pad_crop"),
    [
        (("model=resnet20", "generator=bn_stats"), 4),
        (("model=resnet44", "generator=bn_stats_inception"), 4),
        (("model=resnet20", "generator=deepinversion"), 0),  # published recipes keep their own priors
        (("generator=bn_stats",), 0),  # the digits CNN is trained on uncropped images
    ],
)
def test_bns_synthesis_crops_like_the_models_training(overrides: tuple[str, ...], pad_crop: int):
    assert validate(compose_run(*overrides)).generator.pad_crop == pad_crop
