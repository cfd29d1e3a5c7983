"""Typed stage configs, the one source of every stage default (docs/stages.md "Where a default lives").

Each stage's settings are a dataclass (:mod:`medgr2.configs.training`: sft / distill / loop;
:mod:`medgr2.configs.stages`: generate / score / select / pretrain / inspect / evaluate;
:mod:`medgr2.configs.grpo`, :mod:`medgr2.configs.reward`, :mod:`medgr2.configs.grade`: GRPO, R_φ and D_grade,
whose YAML keys are flat and whose schemas are built from the typed parts). :func:`register_schemas` puts them
into Hydra's ConfigStore as ``schema/stage/<name>`` (and the ``evaluate`` group's as
``schema/evaluate/default``); ``conf/stage/<name>.yaml`` extends its schema
(``defaults: [/schema/stage/<name>@_here_, _self_]``) and holds only what differs from it. Composition then knows
every key and its type: a typo'd key (``stage.max_step=5``) or a value of the wrong type fails there, and the
range checks of ``__post_init__`` run when the stage reads its node (``from_node``), before anything is built.

``import medgr2`` registers the schemas, so they exist before any composition (``train.py`` and the tests import
``medgr2`` first); it imports no torch, transformers or datasets (a test checks): the validators that need the
maths' choice lists import them when they run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from medgr2.configs import reward as _reward
from medgr2.configs.grade import GradeStageConfig
from medgr2.configs.grpo import GRPOSchema, GRPOStageConfig
from medgr2.configs.reward import RewardSchema
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
# composed node is typed all the way down.


@dataclass
class ScoreSchema(ScoreConfig):
    """``stage=score`` as composed: its keys + ``rm`` (stage=reward's settings) + ``generate``."""

    rm: RewardSchema = field(default_factory=RewardSchema)  # which R_φ: the one stage=reward trains with these
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
    grpo: GRPOSchema = field(default_factory=GRPOSchema)  # line 11's GRPO (stage=grpo's settings)
    reward: RewardSchema = field(default_factory=RewardSchema)  # R_φ^0 (stage=reward's settings)
    distill_settings: DistillConfig = field(default_factory=DistillConfig)


#: ``conf/stage/<name>.yaml`` -> the schema it extends.
STAGE_SCHEMAS: dict[str, type] = {
    "sft": SFTConfig, "distill": DistillConfig, "loop": LoopSchema, "generate": GenerateConfig,
    "score": ScoreSchema, "select": SelectSchema, "pretrain": PretrainConfig, "inspect": InspectConfig,
    "evaluate": EvaluateStageConfig, "grpo": GRPOSchema, "reward": RewardSchema, "grade": GradeStageConfig,
}


#: ``stage.name`` -> what checks its resolved node (the typed config its code reads).
STAGE_CHECKS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "sft": SFTConfig.from_node, "distill": DistillConfig.from_node, "loop": LoopConfig.from_node,
    "generate": GenerateConfig.from_node, "score": ScoreConfig.from_node, "select": SelectStageConfig.from_node,
    "pretrain": PretrainConfig.from_node, "inspect": InspectConfig.from_node,
    "evaluate": EvaluateStageConfig.from_node, "grpo": GRPOStageConfig.from_node, "reward": _reward.check_node,
    "grade": GradeStageConfig.from_node,
}
#: Nodes that hold another stage's settings: ``{stage: {node: that stage}}`` (checked with that stage's config).
NESTED_STAGES: dict[str, dict[str, str]] = {
    "loop": {"generate": "generate", "score": "score", "sft": "sft", "grpo": "grpo", "reward": "reward",
             "distill_settings": "distill"},
    "score": {"generate": "generate", "rm": "reward"},
    "select": {"score": "score"},
}


def check_stage(name: str, node: Mapping[str, Any]) -> None:
    """Read a resolved stage node (and the stage nodes nested in it) through its typed config: an unknown key or
    a bad value raises a one-line ``ValueError`` naming the key, before any work."""
    if name in STAGE_CHECKS:
        STAGE_CHECKS[name](node)
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


__all__ = ["NESTED_STAGES", "STAGE_CHECKS", "STAGE_SCHEMAS", "AdaptConfig", "DistillConfig", "EvaluateConfig",
           "EvaluateStageConfig", "GRPOSchema", "GRPOStageConfig", "GenerateConfig", "GradeStageConfig",
           "InspectConfig", "LoopConfig", "LoopSchema", "PretrainConfig", "RewardSchema", "SFTConfig", "ScoreConfig",
           "ScoreSchema", "SelectSchema", "SelectStageConfig", "check_config", "check_stage", "register_schemas"]
