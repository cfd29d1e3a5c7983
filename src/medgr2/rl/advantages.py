"""Group-relative advantages for GRPO (TRL ``GRPOTrainer`` v1.16 semantics).

GRPO samples ``group_size`` completions per prompt and scores each one relative to its siblings, so no
value network is needed: ``A_i = r_i - mean(r_group)``, optionally divided by a standard deviation.
Rewards are laid out *group-contiguous*: rows ``[g * G, (g + 1) * G)`` belong to prompt ``g``, which is
the order produced by ``repeat_interleave`` over prompts (and by TRL).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SCALE_CHOICES", "STD_EPS", "global_reward_std", "group_advantages", "zero_variance_fraction"]

SCALE_CHOICES: tuple[str, ...] = ("group", "batch", "none")
# TRL adds this to the std before dividing; keeping the same constant keeps us numerically comparable.
STD_EPS = 1e-4


def _check_rewards(rewards: Tensor, group_size: int) -> Tensor:
    """Validate shape/values and return ``rewards`` as a float tensor of shape (B,)."""
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if rewards.numel() == 0:
        raise ValueError("rewards is empty")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"batch size {rewards.numel()} is not divisible by group_size {group_size}: rewards must hold "
            f"whole groups laid out group-contiguous"
        )
    if not torch.is_floating_point(rewards):
        rewards = rewards.float()
    bad = ~torch.isfinite(rewards)  # inf - inf in the group mean would be NaN as well
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise ValueError(f"rewards contain NaN or inf at indices {idx}; skip or repair these samples before GRPO")
    return rewards


def _constant_groups(grouped: Tensor) -> Tensor:
    """(n_groups, G) -> (n_groups,) bool: True where every reward in the group is identical."""
    return grouped.amax(dim=1) == grouped.amin(dim=1)


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group",
                     batch_std: Tensor | float | None = None) -> Tensor:
    """Group-relative advantages ``A = r - mean_group(r)``, optionally standardised.

    Args:
        rewards: (B,) scalar reward per completion, group-contiguous, ``B = n_groups * group_size``.
        group_size: completions per prompt (TRL's ``num_generations``).
        scale: ``"group"`` divides by the per-group std (Bessel-corrected) + 1e-4; ``"batch"`` keeps the
            per-group mean but divides by the std over the whole batch + 1e-4 (TRL ``scale_rewards="batch"``);
            ``"none"`` does not divide (Dr. GRPO).
        batch_std: with ``scale="batch"``, the std to divide by instead of this batch's own: under data
            parallelism the std of the rewards of *all* ranks (:func:`global_reward_std`), as TRL gathers them.

    Returns:
        (B,) advantages with the dtype of ``rewards`` (float32 for integer input).

    Groups whose rewards are all equal get advantages of exactly 0 (they carry no learning signal), never
    NaN; a std of a single element (``group_size=1`` or ``B=1``) is taken as 0 instead of torch's NaN.

    Raises:
        ValueError: on a bad ``group_size``/``scale``, a batch that is not whole groups, or NaN / inf rewards
            (the message lists their indices so the caller can drop those samples).

    >>> group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2, scale="none")
    tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    if scale not in SCALE_CHOICES:
        raise ValueError(f"scale must be one of {SCALE_CHOICES}, got {scale!r}")
    rewards = _check_rewards(rewards, group_size)
    grouped = rewards.view(-1, group_size)  # (n_groups, G)
    mean = grouped.mean(dim=1, keepdim=True)  # (n_groups, 1)
    adv = grouped - mean  # (n_groups, G)

    if scale == "group":
        # std of a single element is NaN in torch; a lone completion has no spread, so treat it as 0.
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
        adv = adv / (std + STD_EPS)
    elif scale == "batch":
        if batch_std is not None:
            std = torch.as_tensor(batch_std, dtype=rewards.dtype)
        else:
            std = rewards.std() if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
        adv = adv / (std.to(rewards.device) + STD_EPS)

    # mean() of identical floats can differ from them in the last ulp (float32 mean of three 0.9s is off by
    # 6e-8), which would leave 6e-8 / 1e-4 = 6e-4 of fake "signal" in a dead group: force exact zeros.
    adv = adv.masked_fill(_constant_groups(grouped).unsqueeze(1), 0.0)
    return adv.reshape(-1)  # (B,)


def zero_variance_fraction(rewards: Tensor, group_size: int) -> float:
    """Share of groups whose rewards are all identical (they contribute zero advantage, hence no gradient).

    A high value is the classic "GRPO loss is zero" symptom: the task is too easy or too hard for the
    current policy. ``group_size=1`` gives 1.0 because a single completion has nothing to compare against.

    >>> zero_variance_fraction(torch.tensor([1.0, 1.0, 0.0, 1.0]), group_size=2)
    0.5
    """
    rewards = _check_rewards(rewards, group_size)
    return float(_constant_groups(rewards.view(-1, group_size)).float().mean().item())


def global_reward_std(rewards: Tensor) -> Tensor:
    """Bessel-corrected std of the rewards of every rank of the default process group (this rank's alone when
    none is initialised): one all-reduce of (count, sum, sum of squares) in float64, so ranks may hold different
    numbers of rewards. rewards: (B,) -> 0-dim tensor on the rewards' device."""
    import torch.distributed as dist

    x = rewards.detach().double().reshape(-1)  # (B,)
    moments = torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device), x.sum(),
                           (x * x).sum()])  # (3,)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(moments)
    n, s, sq = moments.unbind()
    if float(n) < 2:
        return torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    var = ((sq - s * s / n) / (n - 1)).clamp(min=0.0)
    return var.sqrt().to(rewards.dtype)
