"""Typed stage configs, the one source of every stage default (docs/stages.md "Where a default lives").

Each stage's settings are a dataclass (:mod:`medgr2.configs.training`: sft / distill / loop;
:mod:`medgr2.configs.stages`: generate / score / select / pretrain / inspect / evaluate); the GRPO and R_φ
settings have theirs beside their modules (:mod:`medgr2.modules.grpo_config`, :mod:`medgr2.modules.reward_config`).
:func:`register_schemas` puts the stage dataclasses into Hydra's ConfigStore as ``schema/stage/<name>`` (and the
``evaluate`` group's as ``schema/evaluate/default``); ``conf/stage/<name>.yaml`` extends its schema
(``defaults: [/schema/stage/<name>@_here_, _self_]``) and holds only what differs from it. Composition then knows
every key and its type: a typo'd key (``stage.max_step=5``) or a value of the wrong type fails there, and the
range checks of ``__post_init__`` run when the stage reads its node (``from_node``), before anything is built.

This package imports no torch/transformers: ``medgr2/__init__`` registers the schemas, so they exist before any
composition (``train.py`` and the tests import ``medgr2`` first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medgr2.configs.stages import (
    EvaluateConfig,
    EvaluateStageConfig,
    GenerateConfig,
    InspectConfig,
    PretrainConfig,
    ScoreConfig,
    SelectStageConfig,
)
from medgr2.configs.training import AdaptConfig, DistillConfig, LoopConfig, SFTConfig

# ------------------------------------------------------------------ schemas of the nodes that nest other stages
# The runtime configs above hold a stage's own keys; these add the nodes that hold other stages' settings, so the
# composed node is typed all the way down. GRPO's and R_φ's nodes keep their flat untyped YAML (``Any``).


@dataclass
class ScoreSchema(ScoreConfig):
    """``stage=score`` as composed: its keys + ``rm`` (stage=reward's settings) + ``generate``."""

    rm: Any = None  # which R_φ: the one stage=reward trains with these settings (conf/stage/reward.yaml)
    generate: GenerateConfig = field(default_factory=GenerateConfig)  # which candidates (source=generated)


@dataclass
class SelectSchema(SelectStageConfig):
    """``stage=select`` as composed: its keys + ``score`` (the stage=score settings of the default pool)."""

    score: ScoreSchema = field(default_factory=ScoreSchema)


@dataclass
class LoopSchema(LoopConfig):
    """``stage=loop`` as composed: its keys + each step's stage settings (``LOOP_STEP_NODES``)."""

    generate: GenerateConfig = field(default_factory=GenerateConfig)
    score: ScoreSchema = field(default_factory=ScoreSchema)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: Any = None  # conf/stage/grpo.yaml (flat keys, typed by medgr2.modules.grpo_config.GRPOConfig)
    reward: Any = None  # conf/stage/reward.yaml (flat keys, typed by medgr2.modules.reward_config)
    distill_settings: DistillConfig = field(default_factory=DistillConfig)


#: ``conf/stage/<name>.yaml`` -> the schema it extends.
STAGE_SCHEMAS: dict[str, type] = {
    "sft": SFTConfig, "distill": DistillConfig, "loop": LoopSchema, "generate": GenerateConfig,
    "score": ScoreSchema, "select": SelectSchema, "pretrain": PretrainConfig, "inspect": InspectConfig,
    "evaluate": EvaluateStageConfig,
}


#: ``stage.name`` -> the typed config its code reads (grpo and reward: theirs beside their modules; grade: its
#: ``grading`` node is :class:`medgr2.data.grade_config.GradeConfig`).
STAGE_CONFIGS: dict[str, Any] = {
    "sft": SFTConfig, "distill": DistillConfig, "loop": LoopConfig, "generate": GenerateConfig, "score": ScoreConfig,
    "select": SelectStageConfig, "pretrain": PretrainConfig, "inspect": InspectConfig, "evaluate": EvaluateStageConfig,
}
#: Nodes that hold another stage's settings: ``{stage: {node: that stage}}`` (checked with that stage's config).
NESTED_STAGES: dict[str, dict[str, str]] = {
    "loop": {"generate": "generate", "score": "score", "sft": "sft", "distill_settings": "distill"},
    "score": {"generate": "generate"},
    "select": {"score": "score"},
}


def check_stage(name: str, node: Mapping[str, Any]) -> None:
    """Read a resolved stage node (and the stage nodes nested in it) through its typed config: an unknown key or
    a bad value raises a one-line ``ValueError`` naming the key, before any work."""
    if name in STAGE_CONFIGS:
        STAGE_CONFIGS[name].from_node(node)
    for key, stage in NESTED_STAGES.get(name, {}).items():
        if node.get(key) is not None:
            check_stage(stage, node[key])


def check_config(stage: Mapping[str, Any], evaluate: Mapping[str, Any] | None) -> None:
    """The run's resolved ``stage`` node (:func:`check_stage`) and ``evaluate`` group (:class:`EvaluateConfig`)."""
    check_stage(str(stage["name"]), stage)
    if evaluate is not None:
        EvaluateConfig.from_node(evaluate)


def register_schemas() -> None:
    """Store the stage schemas in Hydra's ConfigStore (``schema/stage/<name>``, ``schema/evaluate/default``)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, node in STAGE_SCHEMAS.items():
        cs.store(group="schema/stage", name=name, node=node)
    cs.store(group="schema/evaluate", name="default", node=EvaluateConfig)


__all__ = ["NESTED_STAGES", "STAGE_CONFIGS", "STAGE_SCHEMAS", "check_config", "check_stage", "AdaptConfig", "DistillConfig", "EvaluateConfig", "EvaluateStageConfig", "GenerateConfig",
           "InspectConfig", "LoopConfig", "LoopSchema", "PretrainConfig", "SFTConfig", "ScoreConfig", "ScoreSchema",
           "SelectSchema", "SelectStageConfig", "register_schemas"]
