"""One typed source of GRPO defaults: :class:`GRPOConfig` = optimisation + :class:`RolloutConfig` +
:class:`LossConfig` + :class:`RewardConfig`.

``conf/stage/grpo.yaml`` keeps its flat keys (``stage.lr``, ``stage.temperature``, ...: every recipe and sweep
overrides them that way); :meth:`GRPOConfig.from_flat` routes each flat key to the part that owns it (field names
are unique across parts) and :meth:`GRPOConfig.to_flat` goes back. A test checks that every GRPO key of the YAML
equals the dataclass default, so the two cannot drift apart again. Each part validates itself in
``__post_init__`` with a one-line error naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medgr2.data.prompting import SHORT_INSTRUCTION
from medgr2.rl.advantages import SCALE_CHOICES
from medgr2.rl.loss import LOSS_TYPES
from medgr2.rl.rm_normalize import NORMALIZE_CHOICES

ROLLOUT_MODES = ("expand", "repeat", "vllm")
ON_NAN = ("skip", "raise")


def _vllm_defaults() -> dict[str, Any]:
    return {"gpu_memory_utilization": 0.3, "enforce_eager": False, "dtype": "bfloat16", "max_model_len": None}


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


@dataclass
class RolloutConfig:
    """How the G rollouts per prompt are sampled. Every sampling knob is passed explicitly to every mode, so a
    checkpoint's ``generation_config.json`` (Qwen: ``repetition_penalty 1.05``) never changes what is sampled."""

    num_generations: int = 4  # G rollouts per prompt (TRL num_generations)
    max_new_tokens: int = 56  # completion budget; also the dr_grpo normaliser
    temperature: float = 1.0  # > 0; log-probs are scored on logits / temperature (TRL)
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0  # 1.0: off; anything else is sampled but not scored (the loss sees raw logits)
    rollout: str = "expand"  # expand | repeat | vllm
    vllm: dict[str, Any] = field(default_factory=_vllm_defaults)  # vllm.LLM options for rollout=vllm
    instruction: str = SHORT_INSTRUCTION  # the user-turn instruction of the prompts

    def __post_init__(self) -> None:
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
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: = epsilon
    beta: float = 0.0  # KL weight (k3) to the reference policy
    scale_rewards: str = "group"  # group | batch (std of the rewards of all ranks) | none
    num_iterations: int = 1  # optimizer steps on each rollout batch (TRL's mu)
    # rollout=vllm: weight each token's loss by min(exp(logp_policy_old - logp_sampler), cap) (TRL's
    # vllm_importance_sampling_correction / _cap); ignored by the other modes, which sample from the policy itself.
    vllm_importance_sampling_correction: bool = True
    vllm_importance_sampling_cap: float = 2.0

    def __post_init__(self) -> None:
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

    alpha: float = 0.8
    beta_match: float = 0.2
    format_weight: float = 0.0
    rescale_rm: bool = True  # map R_phi from [rm_min, rm_max] to [0, 1] (docs/grpo.md: why it matters)
    rm_min: float = -6.0
    rm_max: float = 10.0
    reward_model: str | None = None  # path of an R_phi export; None: no R_phi (alpha term 0)
    reward_batch_size: int = 32
    # R_phi z-scored before mixing: none | group (the G rollouts of one prompt) | qtype (the question type's rows
    # of the batch); medgr2.rl.rm_normalize. The rm term is then the z-score (rescale_rm does not apply).
    rm_normalize: str = "none"
    on_nan: str = "skip"  # skip | raise
    max_nan_batches: int = 10

    def __post_init__(self) -> None:
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
    """Every GRPO knob with its one default. ``conf/stage/grpo.yaml`` documents each key."""

    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    # optimisation
    lr: float = 1e-5  # measured on the tiny SFT policy: 1e-4 lost 4-12 points in 200 steps, 1e-5 about 0
    weight_decay: float = 0.0
    warmup_steps: int = 0
    total_steps: int = 100  # stage.max_steps in the pipeline (the cosine schedule's length)
    eight_bit_optim: bool = False
    max_grad_norm: float | None = 1.0  # None / 0: no clipping (manual optimization clips by itself)
    # skip the optimizer step when every advantage of the batch is 0 (and beta = 0): AdamW's momentum would
    # otherwise move every weight by about lr with no signal
    skip_zero_advantage: bool = False
    # difficulty filtering (DAPO's dynamic sampling, without re-sampling): train only on the groups whose rollout
    # accuracy is neither 0 nor 1; a batch with no such group is skipped (no step). medgr2.rl.difficulty
    difficulty_filter: bool = False
    # diagnostics
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
        _check(self.loss.loss_type != "dr_grpo" or self.rollout.max_new_tokens >= 1,
               "dr_grpo needs max_new_tokens >= 1")

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
