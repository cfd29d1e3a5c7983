"""R_φ's typed config: one source of defaults that conf/stage/reward.yaml agrees with, validated in one line,
registered in Hydra's ConfigStore, and the object the module is built from."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from conftest import CONF
from omegaconf import OmegaConf

from medgr2.data.grading import GradeConfig
from medgr2.modules.reward_config import RewardModelConfig, RewardStageConfig

#: Keys of the composed reward stage that belong to the grade stage it includes (conf/stage/grade.yaml).
GRADE_KEYS = {"name", "defaults", "source", "grading", "wrong_letter_rate", "image_negative_rate"}


def test_every_key_of_the_reward_yaml_is_known_and_equals_the_dataclass_default():
    node = yaml.safe_load((CONF / "stage" / "reward.yaml").read_text())
    defaults = RewardStageConfig().to_flat()
    own = {k: v for k, v in node.items() if k not in GRADE_KEYS}
    assert set(own) <= set(defaults), sorted(set(own) - set(defaults))
    differ = {k: (v, defaults[k]) for k, v in own.items() if v != defaults[k]}
    assert not differ, differ
    # The YAML documents every stage and head knob (hi, lo and the instruction come from other groups).
    assert set(defaults) - set(own) == {"hi", "lo", "instruction", "eight_bit_optim"}


def test_the_held_out_thresholds_default_to_the_grading_defaults():
    grading = GradeConfig()
    assert (RewardModelConfig().hi, RewardModelConfig().lo) == (grading.synonym, grading.deletion)


def test_both_schemas_are_in_hydras_config_store_with_the_dataclass_defaults():
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    stage = OmegaConf.to_object(store.load("schema/reward_stage.yaml").node)
    model = OmegaConf.to_object(store.load("schema/reward_model.yaml").node)
    assert stage == RewardStageConfig() and model == RewardModelConfig()


def test_the_composed_stage_builds_the_typed_config_and_max_steps_is_the_schedule_length(make_cfg):
    cfg = make_cfg("stage=reward", "stage.pooling=last", "stage.max_steps=7", "stage.val_fraction=0.2")
    rc = RewardStageConfig.from_flat(OmegaConf.to_container(cfg.stage, resolve=True), strict=False)
    assert (rc.model.pooling, rc.model.total_steps, rc.val_fraction) == ("last", 7, 0.2)
    assert rc.model.lr == 2.0e-3 and rc.model.head_lr == 5.0e-3 and rc.to_flat()["max_steps"] == 7
    assert RewardStageConfig.from_flat(rc.to_flat()) == rc


def test_unknown_keys_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"unknown R_phi option\(s\) \['poling'\]") as err:
        RewardStageConfig.from_flat({"poling": "mean"})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"unknown R_phi module option\(s\) \['max_step'\]"):
        RewardModelConfig().replace(max_step=3)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("pooling", "max", "pooling must be one of"),
    ("head_hidden", -1, "head_hidden must be >= 0"),
    ("lr", 0.0, "lr must be > 0"),
    ("head_lr", -1.0, "head_lr must be > 0 or null"),
    ("warmup_steps", -1, "warmup_steps must be >= 0"),
    ("max_steps", 0, "max_steps must be >= 1"),
    ("val_fraction", 1.0, r"val_fraction must be in \(0, 1\)"),
    ("max_val_sources", 0, "max_val_sources must be >= 1 or null"),
    ("eval_batch_size", 0, "eval_batch_size must be >= 1"),
])
def test_bad_values_fail_with_a_one_line_error_naming_the_key(key, value, message):
    with pytest.raises(ValueError, match=message) as err:
        RewardStageConfig.from_flat({key: value})
    assert "\n" not in str(err.value)


def test_the_module_is_built_from_its_config_and_saves_it_as_plain_hyperparameters(shared_cache, tmp_path):
    from medgr2.modules.reward import RewardRegressor

    spec = {"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(shared_cache)}
    config = RewardModelConfig(pooling="last_mean", head_hidden=8, lr=1e-3, head_lr=None, hi=5.0, lo=1.0)
    module = RewardRegressor(spec, config=config, target_mean=2.5, target_std=6.0)
    text = module.model.config.get_text_config().hidden_size
    assert module.cfg == config and module.head.net[0].in_features == 2 * text
    assert module.head_config()["hi"] == 5.0 and module.head_config()["pooling"] == "last_mean"
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["initial_lr"] for g in groups] == [1e-3, 1e-3]  # head_lr None: the backbone's
    # Flat plain values, so a checkpoint's hyperparameters load with weights_only=True.
    torch.save(dict(module.hparams), tmp_path / "hp.pt")
    saved = torch.load(tmp_path / "hp.pt", weights_only=True)
    assert {k: saved[k] for k in dataclasses.asdict(config)} == dataclasses.asdict(config)
    # Flat overrides go on top of the config (the pipeline's keyword call) and are validated the same way.
    assert RewardRegressor(spec, config=config, head_hidden=0).cfg == dataclasses.replace(config, head_hidden=0)
    with pytest.raises(ValueError, match="pooling must be one of"):
        RewardRegressor(spec, pooling="max")
