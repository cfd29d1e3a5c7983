"""Typed configs of the SFT, distill and loop stages: one default per key, validated in ``__post_init__``.

The dataclasses document every key; ``conf/stage/{sft,distill,loop}.yaml`` extend them (registered in Hydra's
ConfigStore by :mod:`medgr2.configs`) and hold only the values that differ. A stage reads its node through
:meth:`from_node`: an unknown key (a typo such as ``stage.max_step=``) and a bad value fail before anything is
built, in one line naming the key. The GRPO knobs have their own typed config (:mod:`medgr2.modules.grpo_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medgr2.configs.base import NodeConfig, replaced
from medgr2.configs.base import check as _check
from medgr2.configs.base import from_node as _from_node
from medgr2.configs.base import positive as _positive

GRPO_PROMPTS = ("d_gen", "train")
#: The loop's nodes that are single stages' own configs (each read by that stage's code).
LOOP_STEP_NODES = ("generate", "score", "sft", "grpo", "reward", "distill_settings")


@dataclass
class OptimConfig:
    """AdamW with a linear warmup and a cosine decay (:func:`medgr2.training.optim.adamw_warmup_cosine`): what
    every trained module's optimizer is built from (SFT, distillation and pretraining; GRPO's and R_φ's configs
    hold the same settings and hand them over)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    total_steps: int = 1000  # the cosine schedule's length: the stage's max_steps

    def __post_init__(self) -> None:
        _positive("lr", self.lr)
        _positive("total_steps", self.total_steps)
        _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")

    def replace(self, **changes: Any) -> OptimConfig:
        """A copy with some fields changed (validated again); an unknown name is a one-line error."""
        return replaced(self, "optimizer", **changes)


class TrainsSFTModule:
    """Mixin of the stage configs that train the SFT module (sft, distill): their ``lr`` / ``weight_decay`` /
    ``warmup_steps`` / ``max_steps`` keys are checked the same way and become its :class:`OptimConfig`."""

    def check_schedule(self) -> None:
        """The schedule keys' one-line checks (named ``stage.<key>``, as the stage's YAML calls them)."""
        for key in ("max_steps", "lr"):
            _positive(f"stage.{key}", getattr(self, key))
        for key in ("warmup_steps", "weight_decay"):
            _check(getattr(self, key) >= 0, f"stage.{key} must be >= 0, got {getattr(self, key)}")

    def optim(self) -> OptimConfig:
        """The module's optimizer settings (the schedule runs over ``max_steps``)."""
        return OptimConfig(lr=self.lr, weight_decay=self.weight_decay,  # type: ignore[attr-defined]
                           warmup_steps=self.warmup_steps, total_steps=self.max_steps)  # type: ignore[attr-defined]


@dataclass
class SFTConfig(TrainsSFTModule, NodeConfig):
    """``stage=sft`` (paper Eq. 2; also the loop's ``stage.sft`` node): loss on the answer tokens only."""

    node_name = "sft"

    name: str = "sft"
    think: bool = True  # target <think>rationale</think><answer>X</answer>; False: <answer>X</answer> only
    train_data: str | None = None  # a saved dataset (e.g. a selection); None: the benchmark's train split
    train_size: int | None = 2000  # rows used (None: all)
    val_size: int | None = 200
    max_steps: int = 400
    batch_size: int = 32
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    warmup_steps: int = 30
    val_every: int = 200
    init: str | None = None  # weights to start from; None: the pretrained base / the model's checkpoint
    ckpt_path: str | None = None  # resume a killed run from its checkpoints/last.ckpt
    evaluate: bool = True

    def __post_init__(self) -> None:
        self.check_schedule()
        for key in ("batch_size", "val_every"):
            _positive(f"stage.{key}", getattr(self, key))
        for key in ("train_size", "val_size"):
            _positive(f"stage.{key}", getattr(self, key), allow_none=True)


@dataclass
class DistillConfig(TrainsSFTModule):
    """``stage=distill`` (Algorithm 1 line 14; also the loop's ``stage.distill_settings``): the generator
    fine-tuned on selected candidates with the SFT module."""

    name: str = "distill"
    train_data: str | None = None  # stage=distill: a selected dataset folder (stage=select output)
    train_size: int | None = None  # rows used (None: all)
    strategy: str | None = None  # generator prompt the items are rendered with; None: the run's prompt.name
    init: str | None = None  # None: generator.weights when generator=hf, else the pretrained base
    out_dir: str | None = None  # None: <run output dir>/generator
    max_steps: int = 200
    batch_size: int = 16
    lr: float = 5.0e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10

    def __post_init__(self) -> None:
        self.check_schedule()
        _positive("stage.batch_size", self.batch_size)
        _positive("stage.train_size", self.train_size, allow_none=True)

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> DistillConfig:
        """From a resolved ``stage`` node; a null value takes the default (the loop passes its settings whole)."""
        return _from_node(cls, {k: v for k, v in dict(node).items() if v is not None}, "distill")


@dataclass
class AdaptConfig:
    """R_φ^{t+1} from R_φ^t (Algorithm 1 lines 12-13; :mod:`medgr2.pipeline.adapt`)."""

    # policy completions (greedy) on the iteration's source images, graded by their answer: correct letter ->
    # grading.synonym (6), wrong letter -> grading.irrelevant (-6), no answer -> grading.deletion (0)
    samples: int = 256
    replay: int = 512  # D_grade rows mixed in, so R_φ keeps its grade scale (and its held-out set)
    max_steps: int = 100
    lr: float = 5.0e-4
    batch_size: int = 32
    # D_pref from the policy's own rollouts (docs/rl_generalization.md; medgr2.pipeline.reward_pairs)
    # greedy: one greedy answer per prompt, graded (above) | pairs: G sampled rollouts per prompt, pairs of a right
    # and a wrong one (Algorithm 1's D_pref; docs/rl_generalization.md)
    d_pref: str = "greedy"
    rollouts: int | None = None  # d_pref=pairs: rollouts per prompt (None: stage.grpo.num_generations)
    max_pairs: int = 1  # d_pref=pairs: pairs per prompt
    image_negatives: bool = False  # d_pref=pairs: the right rollout under another prompt's image, graded irrelevant
    # > 0: R_φ's accuracy at ranking the policy's right vs wrong rollouts of this many validation prompts, before
    # and after adaptation (adapt/rm/policy_pair_acc_before|after)
    heldout: int = 0

    def __post_init__(self) -> None:
        for key in ("samples", "max_steps", "lr", "batch_size", "max_pairs"):
            _positive(f"stage.adapt.{key}", getattr(self, key))
        _check(self.replay >= 0, f"stage.adapt.replay must be >= 0, got {self.replay}")
        _check(self.heldout >= 0, f"stage.adapt.heldout must be >= 0, got {self.heldout}")
        _check(self.d_pref in ("greedy", "pairs"), f"stage.adapt.d_pref must be greedy or pairs, got {self.d_pref!r}")
        if self.rollouts is not None:
            _positive("stage.adapt.rollouts", self.rollouts)


@dataclass
class LoopConfig(NodeConfig):
    """``stage=loop`` (Algorithm 1): the loop's own keys. Its step nodes (:data:`LOOP_STEP_NODES`) are the
    single stages' configs and are read by those stages."""

    node_name = "loop"
    node_ignore = LOOP_STEP_NODES

    name: str = "loop"
    iterations: int = 2  # T
    # D_seed: ground-truth records that initialise D_gen (Algorithm 1 line 1); 0: none. Taken from the end of the
    # train split, so they never overlap generation sources.
    seed_size: int = 200
    grpo_enabled: bool = True  # line 11 (False: SFT only, e.g. the TopK / RandK ablations)
    # GRPO's prompts: d_gen (Algorithm 1: the SFT data) | train (the benchmark's labelled train questions; GRPO
    # needs their answer letters only, no rationales)
    grpo_prompts: str = "d_gen"
    eval_after_sft: bool = True  # also evaluate the SFT policy before GRPO (Table 2's "SFT rewarded" vs "+GRPO")
    adapt_reward: bool = True  # lines 12-13: grade policy samples, retrain R_φ from its previous export
    distill: bool = False  # line 14: distil the generator on the selected data (generator=hf then uses it)
    dir: str | None = None  # None: <paths.root>/outputs/loops/<experiment_name>-<key>
    reward_model: str | None = None  # an existing R_φ export to start from (e.g. a 3B model); None: train R_φ^0
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    def __post_init__(self) -> None:
        if isinstance(self.adapt, Mapping):
            self.adapt = _from_node(AdaptConfig, self.adapt, "loop (stage.adapt)")
        _positive("stage.iterations", self.iterations)
        _check(self.seed_size >= 0, f"stage.seed_size must be >= 0, got {self.seed_size}")
        _check(self.grpo_prompts in GRPO_PROMPTS,
               f"stage.grpo_prompts={self.grpo_prompts!r}: choose one of {', '.join(GRPO_PROMPTS)}")


__all__ = ["GRPO_PROMPTS", "LOOP_STEP_NODES", "AdaptConfig", "DistillConfig", "LoopConfig", "OptimConfig", "SFTConfig"]
