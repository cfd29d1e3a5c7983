"""GRPO's one typed source of defaults (paper §3 "Stage 2", Eq. 3; TRL's ``GRPOTrainer`` semantics, docs/grpo.md).

:class:`GRPOConfig` = optimisation + :class:`RolloutConfig` + :class:`LossConfig` + :class:`RewardConfig`: what
:class:`~medgr2.modules.grpo.GRPOPolicy` takes. :class:`GRPOStageConfig` holds the rest of ``stage=grpo`` (what
to train on, for how long, from where). ``conf/stage/grpo.yaml`` keeps flat keys (``stage.lr``,
``stage.temperature``: every recipe, sweep and MLflow param name uses them): it extends :data:`GRPOSchema`, the
flat schema built from these dataclasses (:func:`medgr2.configs.base.flat_fields`, so it cannot disagree with
them), and :meth:`GRPOConfig.from_flat` routes each flat key to the part that owns it (names are unique across
parts). Each part validates itself in ``__post_init__`` with a one-line error naming the key; the choice lists
(loss types, advantage scalings, R_φ normalisations) are the maths' own, imported when a config is checked so
that ``import medgr2`` stays free of torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medgr2.configs.base import check as _check
from medgr2.configs.base import flat_fields
from medgr2.configs.base import from_node as _from_node
from medgr2.configs.base import positive as _positive

ROLLOUT_MODES = ("expand", "repeat", "vllm")
ON_NAN = ("skip", "raise")


def _vllm_defaults() -> dict[str, Any]:
    return {"gpu_memory_utilization": 0.3, "enforce_eager": False, "dtype": "bfloat16", "max_model_len": None}


@dataclass
class RolloutConfig:
    """How the G rollouts per prompt are sampled. Every sampling knob is passed explicitly to every mode, so a
    checkpoint's ``generation_config.json`` (Qwen: ``repetition_penalty 1.05``) never changes what is sampled."""

    num_generations: int = 4  # G rollouts per prompt (TRL num_generations)
    # completion budget (a SynthMed verify response is <= 55 tokens, 38 on average); also the dr_grpo normaliser
    max_new_tokens: int = 56
    temperature: float = 1.0  # > 0; log-probs are scored on logits / temperature (TRL)
    top_p: float = 1.0  # nucleus sampling
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0  # 1.0: off; anything else is sampled but not scored (the loss sees raw logits)
    # expand: prefill each prompt once, expand its KV cache to G rows (~0.7x the time of repeat) | repeat: HF
    # generate on G copies of each prompt (TRL's way) | vllm: an in-process vLLM engine (GPU; pip install
    # '.[vllm]') sent the policy's weights after every optimizer step (LoRA merged, FSDP2 gathered); logs
    # train/vllm_logp_gap
    rollout: str = "expand"
    # vllm.LLM options for rollout=vllm (any other LLM keyword: +stage.vllm.KEY=): gpu_memory_utilization = the
    # GPU share for vLLM's weights + KV cache (the policy trains in the rest); enforce_eager = no CUDA graphs
    # (starts faster, decodes slower); dtype = the engine's (pushed fp32 weights are cast); max_model_len: null =
    # the model's context length (e.g. 4096 shrinks the KV cache vLLM reserves)
    vllm: dict[str, Any] = field(default_factory=_vllm_defaults)
    instruction: str | None = None  # the prompts' user-turn instruction (the pipeline passes the run's); None: short

    def __post_init__(self) -> None:
        if self.instruction is None:
            from medgr2.data.prompting import SHORT_INSTRUCTION

            self.instruction = SHORT_INSTRUCTION
        _check(self.num_generations >= 2,
               f"num_generations must be >= 2 (GRPO compares rollouts of one prompt), got {self.num_generations}")
        _check(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.temperature > 0, f"temperature must be > 0 (GRPO samples its rollouts), got {self.temperature}")
        _check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, f"top_k must be >= 0 (0: off), got {self.top_k}")
        _check(self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        _check(self.rollout in ROLLOUT_MODES, f"rollout must be one of {ROLLOUT_MODES}, got {self.rollout!r}")
        _check(self.rollout != "expand" or self.repetition_penalty == 1.0,
               "repetition_penalty != 1 is not implemented for rollout=expand (use repeat or vllm)")


@dataclass
class LossConfig:
    """TRL ``GRPOTrainer`` semantics (docs/grpo.md), plus vLLM's truncated importance sampling."""

    loss_type: str = "grpo"  # grpo | bnpo | dr_grpo | dapo
    epsilon: float = 0.2  # clip range: ratio in [1 - epsilon, 1 + epsilon_high]
    epsilon_high: float | None = None  # None: = epsilon (DAPO's "clip-higher" sets it larger, e.g. 0.28)
    beta: float = 0.0  # KL weight (k3) to the reference policy; > 0 keeps a reference (LoRA: adapters disabled)
    scale_rewards: str = "group"  # group | batch | none: divide advantages by the group / batch reward std (+1e-4)
    num_iterations: int = 1  # optimizer steps on each rollout batch (TRL's mu): same batch, old log-probs, clipping
    # rollout=vllm: weight each token's loss by min(exp(logp_policy_old - logp_sampler), cap) (TRL's
    # vllm_importance_sampling_correction / _cap; logs train/is_ratio_*); ignored by the other modes, which
    # sample from the policy itself.
    vllm_importance_sampling_correction: bool = True
    vllm_importance_sampling_cap: float = 2.0

    def __post_init__(self) -> None:
        from medgr2.rl.advantages import SCALE_CHOICES
        from medgr2.rl.loss import LOSS_TYPES

        _check(self.loss_type in LOSS_TYPES, f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        _check(self.epsilon >= 0, f"epsilon must be >= 0, got {self.epsilon}")
        _check(self.epsilon_high is None or self.epsilon_high >= 0,
               f"epsilon_high must be >= 0 or null, got {self.epsilon_high}")
        _check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        _check(self.scale_rewards in SCALE_CHOICES,
               f"scale_rewards must be one of {SCALE_CHOICES}, got {self.scale_rewards!r}")
        _check(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")
        _check(self.vllm_importance_sampling_cap >= 1,
               f"vllm_importance_sampling_cap must be >= 1, got {self.vllm_importance_sampling_cap}")


@dataclass
class RewardConfig:
    """The reward (paper Eq. 3): ``alpha * R_phi + beta_match * match (+ format_weight * format)``."""

    # weight of the reward-model score R_phi (paper: 0.8). On the tiny policy only alpha=0, beta_match=1 raised
    # test accuracy (experiment=topk_grpo_match_train; docs/results.md "GRPO probes")
    alpha: float = 0.8
    beta_match: float = 0.2  # weight of the exact answer-letter match (paper's beta: 0.2); not the KL beta
    format_weight: float = 0.0  # weight of the Med-R1 format reward (<think>..</think><answer>..</answer>); paper: 0
    # map R_phi from [rm_min, rm_max] (the grade range: hallucinated -6 ... original 10) to [0, 1] before
    # weighting, so both terms share a scale (docs/grpo.md)
    rescale_rm: bool = True
    rm_min: float = -6.0
    rm_max: float = 10.0
    reward_model: str | None = None  # path of a trained R_phi (stage=reward export); None: no R_phi (alpha term 0)
    reward_batch_size: int = 32  # completions per reward-model forward
    # R_phi z-scored before mixing with the match term: none | group (a prompt's G rollouts) | qtype (the question
    # type's rows of the batch); medgr2.rl.rm_normalize, docs/rl_generalization.md. The rm term is then the
    # z-score (rescale_rm does not apply).
    rm_normalize: str = "none"
    on_nan: str = "skip"  # NaN reward: skip (log train/nan_batches, no update) | raise (stop with an error)
    max_nan_batches: int = 10  # stop after this many consecutive skipped batches (a broken reward model)

    def __post_init__(self) -> None:
        from medgr2.rl.rm_normalize import NORMALIZE_CHOICES

        _check(self.rm_max > self.rm_min, f"rm_max must be > rm_min, got rm_min={self.rm_min}, rm_max={self.rm_max}")
        _check(self.rm_normalize in NORMALIZE_CHOICES,
               f"rm_normalize must be one of {NORMALIZE_CHOICES}, got {self.rm_normalize!r}")
        _check(self.on_nan in ON_NAN, f"on_nan must be one of {ON_NAN}, got {self.on_nan!r}")
        _check(self.max_nan_batches >= 1, f"max_nan_batches must be >= 1, got {self.max_nan_batches}")
        _check(self.reward_batch_size >= 1, f"reward_batch_size must be >= 1, got {self.reward_batch_size}")
        for k in ("alpha", "beta_match", "format_weight"):
            _check(math.isfinite(getattr(self, k)), f"{k} must be finite, got {getattr(self, k)}")


_PARTS = {"rollout": RolloutConfig, "loss": LossConfig, "reward": RewardConfig}


@dataclass
class GRPOConfig:
    """Every GRPO knob with its one default."""

    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    # optimisation. lr is small: GRPO nudges a policy (Med-R1 uses 1e-6 on a 3B model). Measured on the tiny SFT
    # policy (73.0% test): 1e-4 lost 4-12 points in 200 steps, 3e-5 lost 2, 1e-5 about 0 (docs/results.md)
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    total_steps: int = 100  # stage.max_steps in the pipeline (the cosine schedule's length)
    # gradient clipping by norm (the module clips: manual optimization); None / 0: none. train/grad_norm logs the
    # norm before clipping
    max_grad_norm: float | None = 1.0
    # skip the optimizer step when every advantage of the batch is 0 (and beta = 0): AdamW's momentum would
    # otherwise move every weight by about lr with no signal. Skipped batches are not counted
    skip_zero_advantage: bool = False
    # difficulty filtering (DAPO's dynamic sampling, without re-sampling): train only on the groups whose rollout
    # accuracy is neither 0 nor 1; a batch with no such group is skipped (no step). train/informative_frac (logged
    # either way) is the share of such groups. medgr2.rl.difficulty, docs/rl_generalization.md
    difficulty_filter: bool = False
    # diagnostics: the reward-hacking window (format rate up while accuracy down -> a warning) and the minimum
    # rise/fall between its halves (2 prompts x 4 rollouts: ~2.6 sigma of noise); every step's diagnostics are
    # logged, reaching MLflow in one write per log_flush_every steps
    hacking_window: int = 40
    hacking_threshold: float = 0.15
    log_flush_every: int = 10

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.total_steps >= 1, f"total_steps must be >= 1, got {self.total_steps}")
        _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.max_grad_norm is None or self.max_grad_norm >= 0,
               f"max_grad_norm must be >= 0 or null, got {self.max_grad_norm}")
        _check(self.hacking_window >= 2, f"hacking_window must be >= 2 steps, got {self.hacking_window}")
        _check(self.log_flush_every >= 1, f"log_flush_every must be >= 1, got {self.log_flush_every}")

    # ------------------------------------------------------------------ flat <-> typed
    @classmethod
    def flat_keys(cls) -> dict[str, str | None]:
        """``{flat key: part name}`` (None: a top-level field)."""
        keys: dict[str, str | None] = {}
        for f in dataclasses.fields(cls):
            if f.name in _PARTS:
                for sub in dataclasses.fields(_PARTS[f.name]):
                    keys[sub.name] = f.name
            else:
                keys[f.name] = None
        return keys

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], *, strict: bool = True) -> GRPOConfig:
        """Build from flat keys (``{"lr": 1e-5, "temperature": 0.7, ...}``); missing keys take the defaults.

        ``strict``: an unknown key is an error (one line, naming it); otherwise unknown keys are ignored (a stage
        node also holds non-GRPO keys such as ``batch_size``).
        """
        owners = cls.flat_keys()
        unknown = sorted(k for k in values if k not in owners)
        if strict and unknown:
            raise ValueError(f"unknown GRPO option(s) {unknown}; known: {sorted(owners)}")
        parts: dict[str, dict[str, Any]] = {p: {} for p in _PARTS}
        top: dict[str, Any] = {}
        for k, v in values.items():
            if k not in owners:
                continue
            (top if owners[k] is None else parts[owners[k]])[k] = v
        return cls(**{p: _PARTS[p](**kw) for p, kw in parts.items()}, **top)

    def to_flat(self) -> dict[str, Any]:
        """The flat ``{key: value}`` view (what the module saves as hyperparameters)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _PARTS:
                out.update(dataclasses.asdict(value))
            else:
                out[f.name] = value
        return out

    def replace(self, **flat: Any) -> GRPOConfig:
        """A copy with some flat keys changed (validated again)."""
        return GRPOConfig.from_flat({**self.to_flat(), **flat})


assert len(GRPOConfig.flat_keys()) == sum(len(dataclasses.fields(p)) for p in _PARTS.values()) + \
    len(dataclasses.fields(GRPOConfig)) - len(_PARTS), "GRPO option names must be unique across parts"


@dataclass
class GRPOStageConfig:
    """``stage=grpo``'s own keys (also the loop's ``stage.grpo`` node); the GRPO knobs beside them are
    :class:`GRPOConfig`'s. Evaluates on the test split at the end."""

    name: str = "grpo"
    init: str | None = None  # policy to start from: an SFT export folder (.../policy); None: the pretrained base
    train_data: str | None = None  # a saved dataset of VQA records to draw prompts from; None: the train split
    train_size: int | None = 2000  # prompts used (None: all)
    batch_size: int = 4  # prompts per step (per process); each gives num_generations rollouts
    max_steps: int = 200  # optimizer steps (GRPOConfig.total_steps, the cosine schedule's length)
    ckpt_path: str | None = None  # resume a killed run: path to its checkpoints/last.ckpt
    evaluate: bool = True

    def __post_init__(self) -> None:
        _positive("stage.train_size", self.train_size, allow_none=True)
        _positive("stage.batch_size", self.batch_size)
        _positive("stage.max_steps", self.max_steps)

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> GRPOStageConfig:
        """From a resolved ``stage`` node; its GRPO knobs are checked by building :class:`GRPOConfig` from them
        (an unknown key or a bad value is a one-line error naming it)."""
        own = {f.name for f in dataclasses.fields(cls)}
        stage = _from_node(cls, {k: v for k, v in dict(node).items() if k in own}, "grpo")
        GRPOConfig.from_flat({**{k: v for k, v in dict(node).items() if k not in own}, "total_steps": stage.max_steps})
        return stage


#: Keys of :class:`GRPOConfig` that no YAML sets: the pipeline derives them (``total_steps`` = ``stage.max_steps``,
#: ``instruction`` = the run's ``data.instruction``).
PIPELINE_KEYS = ("total_steps", "instruction")

#: The flat schema ``conf/stage/grpo.yaml`` extends: :class:`GRPOStageConfig`'s keys + every GRPO knob but
#: :data:`PIPELINE_KEYS`, each with its dataclass type and default.
GRPOSchema = dataclasses.make_dataclass(
    "GRPOSchema",
    flat_fields(GRPOStageConfig) + flat_fields(GRPOConfig, flatten=tuple(_PARTS), exclude=PIPELINE_KEYS),
)
GRPOSchema.__doc__ = "``stage=grpo`` as composed (flat): GRPOStageConfig + GRPOConfig's knobs."
GRPOSchema.__module__ = __name__

__all__ = ["ON_NAN", "PIPELINE_KEYS", "ROLLOUT_MODES", "GRPOConfig", "GRPOSchema", "GRPOStageConfig", "LossConfig",
           "RewardConfig", "RolloutConfig"]
