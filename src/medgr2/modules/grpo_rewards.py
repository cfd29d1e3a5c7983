"""GRPO's reward side: the frozen ``R_phi`` as an ``rm_fn``, the composite reward of N completions, and the
reward-hacking monitor. Host-side glue around the pure maths in :mod:`medgr2.rl.rewards`."""

from __future__ import annotations

import logging
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from medgr2.configs.grpo import RewardConfig
from medgr2.data.prompting import SHORT_INSTRUCTION, chat_item
from medgr2.data.response_format import extract_answer, format_reward
from medgr2.rl.rewards import composite_reward_components
from medgr2.rl.rm_normalize import normalization_keys, normalize_within

log = logging.getLogger(__name__)

# rm_fn(records, completions) -> (N,) reward-model scores; records[i] is the VQA record completion i answers.
RewardFn = Callable[[Sequence[Mapping[str, Any]], Sequence[str]], Tensor]


class RewardHackingWarning(UserWarning):
    """Format reward rises while answer accuracy falls: the policy games the format term."""


def reward_model_fn(source: Any, instruction: str = SHORT_INSTRUCTION, batch_size: int = 32) -> RewardFn | None:
    """``rm_fn`` backed by the frozen reward model ``R_phi``: a ``RewardScorer`` or the path of an R_phi export.

    The reward-model module is imported lazily (it is heavy, and optional for match-only GRPO). When it cannot
    be imported, this warns loudly and returns ``None``: GRPO then trains on the match (+format) terms only.
    """
    if hasattr(source, "score"):
        scorer = source
    else:
        try:
            from medgr2.modules.reward_scorer import RewardScorer
        except ImportError as err:
            msg = (f"stage.reward_model={source!r} is set but medgr2.modules.reward_scorer.RewardScorer cannot be "
                   f"imported ({err}); GRPO falls back to the match (+format) reward WITHOUT R_phi (alpha term = "
                   "0). Set stage.reward_model=null to silence this.")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
            return None
        scorer = RewardScorer(source)
    # The user turn is rebuilt with the instruction R_phi was trained with, when the scorer knows it.
    rm_instruction = getattr(scorer, "instruction", instruction)

    def rm_fn(records: Sequence[Mapping[str, Any]], completions: Sequence[str]) -> Tensor:
        # The reward model scores (image, question, response) chat items, the same shape it was trained on.
        items = [chat_item(r, rm_instruction, target=c) for r, c in zip(records, completions, strict=True)]
        return torch.tensor(scorer.score(items, batch_size=batch_size), dtype=torch.float32)  # (N,)

    return rm_fn


class HackingMonitor:
    """Sliding-window reward-hacking detector: format rate up while accuracy down.

    Over the last ``window`` steps it compares the mean of the newer half with the older half; it fires when the
    format rate rose by more than ``threshold`` *and* accuracy fell by more than ``threshold``. It warns once per
    episode (re-armed when the condition clears) and :meth:`update` returns the flag every step, for logging.
    """

    def __init__(self, window: int = 40, threshold: float = 0.15):
        if window < 2:
            raise ValueError(f"hacking window must be >= 2 steps, got {window}")
        self.window, self.threshold = int(window), float(threshold)
        self.fmt: deque[float] = deque(maxlen=self.window)
        self.acc: deque[float] = deque(maxlen=self.window)
        self.active = False

    def update(self, format_rate: float, accuracy: float) -> bool:
        self.fmt.append(format_rate)
        self.acc.append(accuracy)
        if len(self.fmt) < self.window:
            return False
        h = self.window // 2
        f, a = list(self.fmt), list(self.acc)
        d_fmt = sum(f[h:]) / len(f[h:]) - sum(f[:h]) / h
        d_acc = sum(a[h:]) / len(a[h:]) - sum(a[:h]) / h
        flag = d_fmt > self.threshold and d_acc < -self.threshold
        if flag and not self.active:
            msg = (f"possible reward hacking: over the last {self.window} steps the format rate rose by {d_fmt:+.2f} "
                   f"while rollout accuracy changed by {d_acc:+.2f}")
            warnings.warn(msg, RewardHackingWarning, stacklevel=2)
            log.warning(msg)
        self.active = flag
        return flag


def score_completions(rm_fn: RewardFn | None, records: Sequence[Mapping[str, Any]], texts: Sequence[str],
                      cfg: RewardConfig, group_size: int = 1) -> dict[str, Tensor]:
    """Reward components of N completions (``records[i]`` is the record completion ``i`` answers; rows come in
    groups of ``group_size`` rollouts of one prompt).

    Returns ``rm`` (R_phi as used: rescaled when ``cfg.rescale_rm``, z-scored when ``cfg.rm_normalize``),
    ``rm_raw`` (R_phi's own scores; zeros without a reward model), ``match``, ``format``, ``total`` — (N,) each,
    on the CPU. Without ``rm_fn`` the alpha term is 0.
    """
    rescale = cfg.rescale_rm
    if rm_fn is not None:
        rm = torch.as_tensor(rm_fn(records, texts), dtype=torch.float32).reshape(-1)  # (N,)
        if rm.shape[0] != len(texts):
            raise ValueError(f"rm_fn returned {rm.shape[0]} scores for {len(texts)} completions")
    else:
        rm = torch.zeros(len(texts))  # no reward model: the alpha term vanishes (0 after rescaling too)
        rescale = False
    raw = rm.clone()
    keys = normalization_keys(cfg.rm_normalize, records, group_size) if rm_fn is not None else None
    if keys is not None:
        rm, rescale = normalize_within(rm, keys), False  # a z-score: rescaling would only clamp it
    preds = [extract_answer(t) for t in texts]
    comps = composite_reward_components(
        rm, preds, [r["answer"] for r in records], alpha=cfg.alpha, beta=cfg.beta_match,
        format_scores=[format_reward(t) for t in texts], format_weight=cfg.format_weight,
        rescale_rm=rescale, rm_min=cfg.rm_min, rm_max=cfg.rm_max)
    comps["rm_raw"] = raw
    return comps
