"""GRPOConfig: one source of GRPO defaults, validated, and the flat schema conf/stage/grpo.yaml extends built from it."""

from __future__ import annotations

import dataclasses

import pytest

from medgr2.configs.grpo import PIPELINE_KEYS, GRPOConfig, GRPOSchema, GRPOStageConfig


def test_the_flat_schema_holds_every_grpo_knob_with_the_dataclass_default():
    schema = dataclasses.asdict(GRPOSchema())
    knobs = GRPOConfig().to_flat()
    stage = dataclasses.asdict(GRPOStageConfig())
    assert set(schema) == (set(knobs) - set(PIPELINE_KEYS)) | set(stage)
    assert {k: schema[k] for k in stage} == stage
    assert {k: v for k, v in knobs.items() if k not in PIPELINE_KEYS and k != "instruction"} == \
        {k: schema[k] for k in knobs if k not in PIPELINE_KEYS and k != "instruction"}
    # the measured values are the one default: lr 1e-5, 56 new tokens, clipping at 1.0
    assert (schema["lr"], schema["max_new_tokens"], schema["max_grad_norm"]) == (1e-5, 56, 1.0)
    assert GRPOSchema.__dataclass_fields__["max_grad_norm"].type == float | None


def test_the_pipeline_builds_the_typed_config_from_the_composed_stage(make_cfg):
    from medgr2.pipeline.grpo import grpo_config

    cfg = make_cfg("stage=grpo", "stage.temperature=0.7", "stage.scale_rewards=batch", "stage.max_steps=7")
    gc = grpo_config(cfg)
    assert gc.rollout.temperature == 0.7 and gc.loss.scale_rewards == "batch" and gc.total_steps == 7
    assert gc.reward.alpha == 0.8 and gc.lr == 1e-5


def test_flat_keys_round_trip_and_unknown_keys_are_refused_in_one_line():
    cfg = GRPOConfig.from_flat({"temperature": 0.5, "beta": 0.1, "alpha": 0.3, "lr": 2e-5})
    assert GRPOConfig.from_flat(cfg.to_flat()) == cfg
    with pytest.raises(ValueError, match=r"unknown GRPO option\(s\) \['temprature'\]"):
        GRPOConfig.from_flat({"temprature": 0.5})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("num_generations", 1, "num_generations must be >= 2"),
    ("temperature", 0.0, "temperature must be > 0"),
    ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
    ("rollout", "beam", "rollout must be one of"),
    ("loss_type", "ppo", "loss_type must be one of"),
    ("scale_rewards", "rank", "scale_rewards must be one of"),
    ("num_iterations", 0, "num_iterations must be >= 1"),
    ("on_nan", "ignore", "on_nan must be one of"),
    ("rm_max", -7.0, "rm_max must be > rm_min"),
    ("vllm_importance_sampling_cap", 0.5, "vllm_importance_sampling_cap must be >= 1"),
    ("repetition_penalty", 1.05, "repetition_penalty != 1 is not implemented for rollout=expand"),
])
def test_bad_values_fail_with_a_one_line_error_naming_the_key(key, value, message):
    with pytest.raises(ValueError, match=message) as err:
        GRPOConfig.from_flat({key: value})
    assert "\n" not in str(err.value)
