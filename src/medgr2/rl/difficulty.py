"""Where GRPO can learn: difficulty filtering of rollout groups (RL-for-reasoning practice, e.g. DAPO's dynamic
sampling). A group whose G rollouts are all right or all wrong has no within-group answer signal: with the match
reward alone its advantages are 0, and with R_φ mixed in its advantages come from R_φ only (the term that rose
while accuracy fell, docs/rl_generalization.md). Filtering keeps the prompts whose rollout accuracy is strictly
between 0 and 1.

Pure functions on (N,) group-contiguous tensors (rows ``[i*G, (i+1)*G)`` answer prompt ``i``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["group_accuracy", "informative_fraction", "informative_groups", "kept_rows"]


def group_accuracy(match: Tensor, group_size: int) -> Tensor:
    """(n_groups,) share of each group's rollouts that match the reference (``match`` is (N,) 0/1).

    >>> group_accuracy(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    tensor([0.5000, 1.0000])
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if match.dim() != 1 or match.numel() == 0 or match.numel() % group_size:
        raise ValueError(f"match must be 1-D with whole groups of {group_size}, got shape {tuple(match.shape)}")
    return match.float().view(-1, group_size).mean(dim=1)


def informative_groups(match: Tensor, group_size: int) -> Tensor:
    """(n_groups,) bool: the group's rollout accuracy is neither 0 nor 1 (its rollouts disagree on the answer).

    >>> informative_groups(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]), 2)
    tensor([ True, False, False])
    """
    acc = group_accuracy(match, group_size)
    return (acc > 0) & (acc < 1)


def informative_fraction(match: Tensor, group_size: int) -> Tensor:
    """Share of groups that are informative (not all-equal in the match term): a 0-dim tensor.

    >>> informative_fraction(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    tensor(0.5000)
    """
    return informative_groups(match, group_size).float().mean()


def kept_rows(keep: Tensor, group_size: int) -> Tensor:
    """(n_kept * G,) long indices of the rows of the kept groups, in order (``keep`` is (n_groups,) bool).

    >>> kept_rows(torch.tensor([False, True]), 2)
    tensor([2, 3])
    """
    if keep.dim() != 1 or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a 1-D bool tensor, got {keep.dtype} of shape {tuple(keep.shape)}")
    groups = keep.nonzero().flatten()  # (n_kept,)
    return (groups.view(-1, 1) * group_size + torch.arange(group_size, device=keep.device)).flatten()
