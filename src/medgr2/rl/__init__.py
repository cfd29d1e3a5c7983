"""Pure GRPO maths on tensors: advantages, the clipped loss and the MedGR2 reward (the response format's parsers are in
:mod:`medgr2.data.response_format`).

Nothing here knows Lightning or a model object, so each function can be tested (and compared with TRL)
on hand-written tensors.
"""

from __future__ import annotations

from medgr2.rl.advantages import SCALE_CHOICES, group_advantages, zero_variance_fraction
from medgr2.rl.loss import LOSS_TYPES, grpo_loss, grpo_loss_with_stats
from medgr2.rl.rewards import composite_reward, composite_reward_components, rescale_rm_scores

__all__ = [
    "LOSS_TYPES",
    "SCALE_CHOICES",
    "composite_reward",
    "composite_reward_components",
    "group_advantages",
    "grpo_loss",
    "grpo_loss_with_stats",
    "rescale_rm_scores",
    "zero_variance_fraction",
]
