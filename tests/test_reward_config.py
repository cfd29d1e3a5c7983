"""R_φ's typed config: one source of defaults that the flat schema of conf/stage/reward.yaml is built from,
validated in one line, and the object the module is built from."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from medgr2.configs.grade import GradeStageConfig
from medgr2.configs.reward import PIPELINE_KEYS, RewardModelConfig, RewardSchema, RewardStageConfig
from medgr2.data.grading import GradeConfig


def test_the_flat_schema_holds_d_grades_keys_and_every_r_phi_knob_with_the_dataclass_default():
    schema = dataclasses.asdict(RewardSchema())
    flat = RewardStageConfig().to_flat()
    grade = dataclasses.asdict(GradeStageConfig())
    assert set(schema) == (set(flat) - set(PIPELINE_KEYS)) | set(grade)
    assert {k: schema[k] for k in flat if k not in PIPELINE_KEYS} == \
        {k: v for k, v in flat.items() if k not in PIPELINE_KEYS}
    assert {k: schema[k] for k in grade if k != "name"} == {k: v for k, v in grade.items() if k != "name"}
    assert schema["name"] == "reward" and schema["max_steps"] == RewardModelConfig().total_steps


def test_the_held_out_thresholds_default_to_the_grading_defaults():
    grading = GradeConfig()
    assert (RewardModelConfig().hi, RewardModelConfig().lo) == (grading.synonym, grading.deletion)


def test_the_schema_is_in_hydras_config_store_with_the_dataclass_defaults():
    from hydra.core.config_store import ConfigStore

    node = ConfigStore.instance().load("schema/stage/reward.yaml").node
    assert OmegaConf.to_object(node) == RewardSchema()


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
