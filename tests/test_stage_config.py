"""Typed stage configs (pipeline/stage_config.py): one default per key, the YAML mirrors it, bad input fails early."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import CONF

from medgr2.configs.training import LOOP_STEP_NODES, DistillConfig, LoopConfig, SFTConfig
from medgr2.pipeline.common import to_dict


def _yaml(name: str) -> dict:
    return yaml.safe_load((CONF / "stage" / f"{name}.yaml").read_text())


@pytest.mark.parametrize(("name", "cls", "interpolated"), [
    ("sft", SFTConfig, ()),
    ("distill", DistillConfig, ("strategy",)),  # ${prompt.name}: the dataclass's None means the same
])
def test_every_key_of_the_stage_yaml_equals_the_dataclass_default(name, cls, interpolated):
    node = {k: v for k, v in _yaml(name).items() if k not in interpolated}
    defaults = dataclasses.asdict(cls())
    assert sorted(node) == sorted(k for k in defaults if k not in interpolated)  # every key documented, none extra
    assert {k: (v, defaults[k]) for k, v in node.items() if v != defaults[k]} == {}


def test_the_loop_yaml_holds_the_loop_defaults_and_only_step_nodes_besides():
    node = {k: v for k, v in _yaml("loop").items() if k != "defaults"}
    defaults = dataclasses.asdict(LoopConfig())
    own = {k: v for k, v in node.items() if k not in LOOP_STEP_NODES}
    assert sorted(own) == sorted(defaults)
    assert {k: (v, defaults[k]) for k, v in own.items() if v != defaults[k]} == {}


def test_the_composed_stages_and_the_loops_steps_read_as_typed_configs(make_cfg):
    assert SFTConfig.from_node(to_dict(make_cfg("stage=sft", "stage.lr=0.01").stage)).lr == 0.01
    assert SFTConfig.from_node(to_dict(make_cfg("experiment=sft_raw").stage)).think is False
    loop = make_cfg("experiment=topk_grpo_match_train")
    lc = LoopConfig.from_node(to_dict(loop.stage))
    assert (lc.grpo_prompts, lc.iterations, lc.adapt.replay) == ("train", 1, 512)
    assert SFTConfig.from_node(to_dict(loop.stage.sft)).max_steps == 400
    assert DistillConfig.from_node(to_dict(loop.stage.distill_settings)).strategy == "metacognitive"


@pytest.mark.parametrize(("cls", "values", "message"), [
    (SFTConfig, {"max_steps": 0}, r"stage.max_steps must be > 0, got 0"),
    (SFTConfig, {"train_size": -1}, r"stage.train_size must be > 0 or null, got -1"),
    (SFTConfig, {"max_step": 10}, r"unknown stage=sft option\(s\) \['max_step'\]"),
    (DistillConfig, {"lr": 0.0}, r"stage.lr must be > 0, got 0.0"),
    (LoopConfig, {"grpo_prompts": "test"}, r"stage.grpo_prompts='test': choose one of d_gen, train"),
    (LoopConfig, {"iterations": 0}, r"stage.iterations must be > 0, got 0"),
    (LoopConfig, {"adapt": {"samples": 8, "replays": 3}}, r"unknown stage=loop \(stage.adapt\) option\(s\) \['replays'\]"),
])
def test_bad_stage_values_fail_in_one_line_naming_the_key(cls, values, message):
    with pytest.raises(ValueError, match=message) as err:
        cls.from_node(values)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "trainer").glob("*.yaml")))
def test_every_trainer_option_holds_only_lightning_trainer_keywords(make_cfg, option):
    import inspect

    import lightning as L

    cfg = make_cfg(f"trainer={option}")
    accepted = set(inspect.signature(L.Trainer.__init__).parameters)
    assert set(cfg.trainer) - accepted == set()
    assert cfg.trainer_name == option and int(cfg.checkpoint.every_n_train_steps) >= 1


def test_the_checkpoint_cadence_is_operational_but_the_trainer_is_part_of_the_loops_identity(make_cfg):
    from medgr2.pipeline.loop_state import loop_key

    key = loop_key(make_cfg("stage=loop"))
    assert loop_key(make_cfg("stage=loop", "checkpoint.every_n_train_steps=7")) == key
    assert loop_key(make_cfg("stage=loop", "trainer.devices=2")) != key
