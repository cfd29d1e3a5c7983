"""Typed stage configs (medgr2.configs): one default per key in a dataclass, the stage YAMLs extend its schema and
hold only what differs, and a typo or a bad value fails early in one line naming the key."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import yaml
from conftest import CONF, ROOT
from hydra.errors import ConfigCompositionException

from medgr2.configs import STAGE_CHECKS, STAGE_SCHEMAS, check_config
from medgr2.configs.stages import (
    EvaluateConfig,
    GenerateConfig,
    InspectConfig,
    ScoreConfig,
    SelectStageConfig,
)
from medgr2.configs.training import DistillConfig, LoopConfig, SFTConfig
from medgr2.pipeline.common import to_dict


def _yaml(path) -> dict:
    node = yaml.safe_load(path.read_text()) or {}
    node.pop("defaults", None)
    return node


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=list) == json.dumps(b, sort_keys=True, default=list)


def _repeated_defaults(node: dict, defaults: dict, where: str) -> list[str]:
    """Keys of a YAML node whose value equals the schema default (nested typed nodes included)."""
    out = []
    for key, value in node.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            out += _repeated_defaults(value, default, f"{where}.{key}")
        elif key in defaults and _same(value, default):
            out.append(f"{where}.{key}={value!r}")
    return out


@pytest.mark.parametrize(("path", "schema"), [
    *[(CONF / "stage" / f"{name}.yaml", cls) for name, cls in sorted(STAGE_SCHEMAS.items())],
    (CONF / "evaluate" / "default.yaml", EvaluateConfig),
], ids=lambda p: getattr(p, "stem", getattr(p, "__name__", str(p))))
def test_a_stage_yaml_holds_no_key_equal_to_its_schema_default(path, schema):
    text = path.read_text()
    assert "defaults:" in text and "@_here_" in text  # it extends its schema
    assert _repeated_defaults(_yaml(path), dataclasses.asdict(schema()), path.stem) == []


@pytest.mark.parametrize("name", sorted(STAGE_SCHEMAS))
def test_the_composed_stage_node_shows_every_key_of_its_schema(make_cfg, name):
    cfg = make_cfg(f"stage={name}")
    assert list(cfg.stage) == [f.name for f in dataclasses.fields(STAGE_SCHEMAS[name])]
    assert cfg.stage.name == name
    check_config(to_dict(cfg.stage), to_dict(cfg.evaluate))  # the defaults pass their own validation


def test_cfg_job_prints_the_defaults_the_yaml_no_longer_repeats():
    out = subprocess.run([sys.executable, "train.py", "stage=sft", "--cfg", "job"], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    stage = yaml.safe_load(out)["stage"]
    assert stage == dataclasses.asdict(SFTConfig())


@pytest.mark.parametrize(("overrides", "key", "where"), [
    (("stage=sft", "stage.max_step=5"), "max_step", "SFTConfig"),
    (("stage=loop", "stage.sft.lr_max=5"), "lr_max", "SFTConfig"),
    (("stage=loop", "stage.adapt.replays=5"), "replays", "AdaptConfig"),
    (("stage=select", "stage.score.generate.n_source=5"), "n_source", "GenerateConfig"),
    (("evaluate.protocl=medr1",), "protocl", "EvaluateConfig"),
    (("stage=grpo", "stage.temprature=0.7"), "temprature", "GRPOSchema"),
    (("stage=loop", "stage.grpo.alhpa=0"), "alhpa", "GRPOSchema"),
    (("stage=reward", "stage.poling=last"), "poling", "RewardSchema"),
    (("stage=score", "stage.rm.grading.synonym_rat=0.1"), "synonym_rat", "GradeConfig"),
    (("stage=grade", "stage.source.splt=val"), "splt", "GradeSource"),
])
def test_a_typod_key_fails_at_composition_naming_it(make_cfg, overrides, key, where):
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg(*overrides)
    chain = f"{err.value} {err.value.__cause__}"
    assert key in chain and where in chain


def test_a_key_added_with_plus_passes_hydra_but_fails_the_stage_check_naming_it(make_cfg):
    cfg = make_cfg("stage=sft", "+stage.max_step=5")  # `+` opens the node: Hydra adds the key
    with pytest.raises(ValueError, match=r"^unknown stage=sft option\(s\) \['max_step'\]; known: "):
        check_config(to_dict(cfg.stage), to_dict(cfg.evaluate))


def test_importing_medgr2_registers_the_schemas_without_torch_transformers_or_datasets():
    # The schemas must exist before any composition, and `import medgr2` must stay light: the validators that
    # need the maths' choice lists import them when they run.
    code = ("import sys, medgr2; from hydra.core.config_store import ConfigStore; "
            "ConfigStore.instance().load('schema/stage/grpo.yaml'); "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert out.strip() == "[]"


def test_grpo_and_reward_values_are_checked_before_any_work(make_cfg):
    with pytest.raises(ValueError, match=r"^loss_type must be one of .*got 'ppo'$"):
        check_config(to_dict(make_cfg("stage=grpo", "stage.loss_type=ppo").stage), None)
    with pytest.raises(ValueError, match=r"^stage.image_negative_rate must be in \[0, 1\], got 2.0$"):
        check_config(to_dict(make_cfg("stage=loop", "stage.reward.image_negative_rate=2").stage), None)
    with pytest.raises(ValueError, match=r"^pooling must be one of .*got 'max'$"):
        check_config(to_dict(make_cfg("stage=score", "stage.rm.pooling=max").stage), None)


def test_a_value_of_the_wrong_type_fails_at_composition(make_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg("stage=generate", "stage.n_sources=many")
    assert "n_sources" in f"{err.value} {err.value.__cause__}"


def test_the_composed_stages_and_the_loops_steps_read_as_typed_configs(make_cfg):
    assert SFTConfig.from_node(to_dict(make_cfg("stage=sft", "stage.lr=0.01").stage)).lr == 0.01
    assert SFTConfig.from_node(to_dict(make_cfg("experiment=sft_raw").stage)).think is False
    loop = make_cfg("experiment=topk_grpo_match_train")
    lc = LoopConfig.from_node(to_dict(loop.stage))
    assert (lc.grpo_prompts, lc.iterations, lc.adapt.replay) == ("train", 1, 512)
    assert SFTConfig.from_node(to_dict(loop.stage.sft)).max_steps == 400
    assert DistillConfig.from_node(to_dict(loop.stage.distill_settings)).strategy == "metacognitive"
    assert GenerateConfig.from_node(to_dict(loop.stage.generate)).seed == 0  # ${seeds.pool}
    assert ScoreConfig.from_node(to_dict(make_cfg("stage=select").stage.score)).source == "generated"


@pytest.mark.parametrize(("cls", "values", "message"), [
    (SFTConfig, {"max_steps": 0}, r"stage.max_steps must be > 0, got 0"),
    (SFTConfig, {"train_size": -1}, r"stage.train_size must be > 0 or null, got -1"),
    (SFTConfig, {"max_step": 10}, r"unknown stage=sft option\(s\) \['max_step'\]"),
    (DistillConfig, {"lr": 0.0}, r"stage.lr must be > 0, got 0.0"),
    (LoopConfig, {"grpo_prompts": "test"}, r"stage.grpo_prompts='test': choose one of d_gen, train"),
    (LoopConfig, {"iterations": 0}, r"stage.iterations must be > 0, got 0"),
    (LoopConfig, {"adapt": {"samples": 8, "replays": 3}}, r"unknown stage=loop \(stage.adapt\) option\(s\) \['replays'\]"),
    (GenerateConfig, {"n_sources": -1}, r"stage.n_sources must be > 0 or null, got -1"),
    (GenerateConfig, {"where": "CT"}, r"stage.where must be a mapping"),
    (ScoreConfig, {"source": "pool"}, r"stage.source='pool': choose one of generated, split"),
    (SelectStageConfig, {"batch_size": 0}, r"stage.batch_size must be > 0, got 0"),
    (InspectConfig, {"splits": []}, r"stage.splits must be a non-empty list"),
    (EvaluateConfig, {"protocol": "strict"}, r"evaluate.protocol: unknown evaluation protocol 'strict'"),
    (EvaluateConfig, {"max_new_tokens": 0}, r"evaluate.max_new_tokens must be > 0, got 0"),
])
def test_bad_stage_values_fail_in_one_line_naming_the_key(cls, values, message):
    with pytest.raises(ValueError, match=message) as err:
        cls.from_node(values)
    assert "\n" not in str(err.value)


def test_a_run_checks_its_stage_and_the_loops_steps_before_any_work(make_cfg, tmp_path):
    from medgr2.pipeline import run

    with pytest.raises(ValueError, match=r"^stage.n_sources must be > 0 or null, got -1$"):
        run(make_cfg("stage=generate", "stage.n_sources=-1", "logger=none"))
    with pytest.raises(ValueError, match=r"^stage.warmup_steps must be >= 0, got -1$"):
        run(make_cfg("stage=loop", "stage.sft.warmup_steps=-1", "logger=none"))
    assert not (tmp_path / "out").exists()  # nothing was built
    assert set(STAGE_CHECKS) <= set(STAGE_SCHEMAS)


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
