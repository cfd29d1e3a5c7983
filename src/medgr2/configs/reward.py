"""R_φ's one typed source of defaults (paper §3, Eq. 1): :class:`RewardModelConfig` (what
:class:`~medgr2.modules.reward.RewardRegressor` needs) inside :class:`RewardStageConfig` (the rest of
``stage=reward``: data, held-out split, batches, resume).

``conf/stage/reward.yaml`` keeps flat keys (``stage.lr``, ``stage.pooling``, ...: recipes, the loop's R_φ
adaptation, sweeps and every R_φ cache key use them): it extends :data:`RewardSchema`, built from these
dataclasses and D_grade's (:class:`medgr2.configs.grade.GradeStageConfig`: R_φ trains on D_grade, which is built
when missing). :meth:`RewardStageConfig.from_flat` routes each key to the part that owns it (``max_steps`` is the
module's ``total_steps``, the length of its cosine schedule) and :meth:`RewardStageConfig.to_flat` goes back.
Both dataclasses validate themselves in ``__post_init__`` with a one-line error naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medgr2.configs.base import flat_fields, replaced
from medgr2.configs.grade import GradeStageConfig

#: The YAML's name of a module field (the stage says ``max_steps``, the LR schedule ``total_steps``).
FLAT_ALIASES = {"max_steps": "total_steps"}


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


@dataclass
class RewardModelConfig:
    """Every setting of the R_φ module: head, optimisation, held-out thresholds, the prompt instruction."""

    # Head input (models/reward_head.py). The 2-layer tiny VLM needs the mean over the response tokens: last-token
    # pooling plateaus near held-out Spearman 0.5 on SynthMed; a deep VLM does fine with last.
    pooling: str = "mean"  # last | mean | last_mean
    head_hidden: int = 64  # Linear(., 64) -> GELU -> Linear(64, 1); 0: a single Linear
    resolve_letter: bool = True  # items show "\nB) <option text>" after a response answering B
    # optimisation
    lr: float = 2.0e-3  # backbone
    head_lr: float | None = 5.0e-3  # the fresh head next to a pretrained backbone; None: = lr
    weight_decay: float = 0.0
    warmup_steps: int = 30
    total_steps: int = 800  # stage.max_steps: the optimizer steps and the cosine schedule's length
    # held-out separation accuracy: good >= hi, bad <= lo (the pipeline passes stage.grading.synonym / .deletion)
    hi: float = 6.0
    lo: float = 0.0
    instruction: str = ""  # the prompt instruction items are built with (the pipeline passes data.instruction)

    def __post_init__(self) -> None:
        from medgr2.models.reward_head import (
            POOLINGS,  # here: the schema is registered before torch is imported
        )

        _check(self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        _check(self.head_hidden >= 0, f"head_hidden must be >= 0 (0: a single Linear), got {self.head_hidden}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.head_lr is None or self.head_lr > 0, f"head_lr must be > 0 or null, got {self.head_lr}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.total_steps >= 1, f"max_steps must be >= 1, got {self.total_steps}")
        _check(math.isfinite(self.hi) and math.isfinite(self.lo) and self.hi >= self.lo,
               f"the held-out thresholds need hi >= lo, got hi={self.hi}, lo={self.lo}")

    def replace(self, **changes: Any) -> RewardModelConfig:
        """A copy with some fields changed (validated again); an unknown name is a one-line error."""
        return replaced(self, "R_phi module", **changes)


@dataclass
class RewardStageConfig:
    """``stage=reward``'s own keys; the module's are in :attr:`model`. ``conf/stage/reward.yaml`` documents each."""

    model: RewardModelConfig = field(default_factory=RewardModelConfig)
    train_data: str | None = None  # a saved graded dataset (e.g. graded policy samples); None: D_grade
    init: str | None = None  # continual adaptation: a previous R_φ export folder (or a reward .ckpt); None: the base
    val_fraction: float = 0.1  # share of source records held out (all grades of a record on one side)
    max_val_sources: int | None = 200  # cap on held-out records (each gives its graded rows + the probes)
    normalize: bool = True  # regress standardised targets (mean/std of the training targets), report grade scale
    lora: bool | None = None  # None: model.lora.enabled; true/false overrides it
    batch_size: int = 32
    eval_batch_size: int = 64
    val_every: int = 400
    ckpt_path: str | None = None  # resume a killed run from its checkpoints/last.ckpt

    def __post_init__(self) -> None:
        _check(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        _check(self.max_val_sources is None or self.max_val_sources >= 1,
               f"max_val_sources must be >= 1 or null, got {self.max_val_sources}")
        for key in ("batch_size", "eval_batch_size", "val_every"):
            _check(getattr(self, key) >= 1, f"{key} must be >= 1, got {getattr(self, key)}")

    # ------------------------------------------------------------------ flat <-> typed
    @classmethod
    def flat_keys(cls) -> dict[str, str | None]:
        """``{flat (YAML) key: "model" or None}``: which part owns each key (None: this class)."""
        keys: dict[str, str | None] = {}
        for f in dataclasses.fields(RewardModelConfig):
            inverse = {v: k for k, v in FLAT_ALIASES.items()}
            keys[inverse.get(f.name, f.name)] = "model"
        keys.update({f.name: None for f in dataclasses.fields(cls) if f.name != "model"})
        return keys

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], *, strict: bool = True) -> RewardStageConfig:
        """Build from flat keys (``{"lr": 1e-3, "pooling": "last", "max_steps": 200, ...}``); missing keys take the
        defaults. ``strict``: an unknown key is a one-line error; otherwise unknown keys are ignored (the composed
        stage node also holds the grade stage's ``source``/``grading`` and its ``name``)."""
        owners = cls.flat_keys()
        unknown = sorted(k for k in values if k not in owners)
        _check(not (strict and unknown), f"unknown R_phi option(s) {unknown}; known: {sorted(owners)}")
        model: dict[str, Any] = {}
        top: dict[str, Any] = {}
        for k, v in values.items():
            if k in owners:
                (top if owners[k] is None else model)[FLAT_ALIASES.get(k, k)] = v
        return cls(model=RewardModelConfig(**model), **top)

    def to_flat(self) -> dict[str, Any]:
        """The flat ``{YAML key: value}`` view."""
        inverse = {v: k for k, v in FLAT_ALIASES.items()}
        out = {inverse.get(k, k): v for k, v in dataclasses.asdict(self.model).items()}
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"})
        return out


def check_node(node: Mapping[str, Any]) -> None:
    """Check a resolved ``stage=reward`` node: its R_φ keys through :class:`RewardStageConfig`, its D_grade keys
    through :class:`GradeStageConfig`; an unknown key or a bad value is a one-line error naming it."""
    grade_keys = {f.name for f in dataclasses.fields(GradeStageConfig)}
    # `+stage.ship=true` (`make reward0`) is a switch of the run, not a setting: in no schema, so a config with it
    # composes to the node (and the R_φ cache key) of the same config without it.
    _check(isinstance(node.get("ship", False), bool), f"stage.ship must be true or false, got {node.get('ship')!r}")
    RewardStageConfig.from_flat({k: v for k, v in dict(node).items() if k not in grade_keys and k != "ship"})
    GradeStageConfig.from_node({k: v for k, v in dict(node).items() if k in grade_keys}, stage="reward")


#: Keys of :class:`RewardModelConfig` that no YAML sets: the pipeline passes them (``hi``/``lo`` = the grading's
#: synonym/deletion grades, ``instruction`` = the run's ``data.instruction``).
PIPELINE_KEYS = ("hi", "lo", "instruction")

#: The flat schema ``conf/stage/reward.yaml`` extends: D_grade's keys (:class:`GradeStageConfig`, named
#: ``reward``) + R_φ's (``max_steps`` for the module's ``total_steps``), each with its dataclass type and default.
RewardSchema = dataclasses.make_dataclass(
    "RewardSchema",
    [("name", str, field(default="reward"))]
    + flat_fields(RewardStageConfig, flatten=("model",), exclude=PIPELINE_KEYS,
                  aliases={v: k for k, v in FLAT_ALIASES.items()}),
    bases=(GradeStageConfig,),
)
RewardSchema.__doc__ = "``stage=reward`` as composed (flat): D_grade's keys + RewardStageConfig's + the module's."
RewardSchema.__module__ = __name__

__all__ = ["FLAT_ALIASES", "PIPELINE_KEYS", "RewardModelConfig", "RewardSchema", "RewardStageConfig", "check_node"]
