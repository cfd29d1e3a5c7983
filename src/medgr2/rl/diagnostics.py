"""Within-group diagnostics of GRPO rewards, and the measurement behind mapping R_phi to [0, 1].

GRPO learns only from differences *within* a group (the G rollouts of one prompt), so what matters for a reward
term is its within-group spread, not its level. :func:`group_std` is what the module logs per component;
:func:`within_group_correlation` says which term drives the advantages; :func:`simulate_rm_mapping` reproduces the
measurement documented in docs/grpo.md (R_phi on its raw [-6, 10] scale drowns the 0/1 match term).
"""

from __future__ import annotations

import torch
from torch import Tensor

from medgr2.rl.rewards import rescale_rm_scores

__all__ = ["group_std", "simulate_rm_mapping", "within_group_correlation", "zero_advantage_fraction"]


def _groups(x: Tensor, group_size: int) -> Tensor:
    if x.dim() != 1 or x.numel() == 0 or x.numel() % group_size:
        raise ValueError(f"expected a 1-D tensor of whole groups of {group_size}, got shape {tuple(x.shape)}")
    return x.float().view(-1, group_size)  # (n_groups, G)


def group_std(values: Tensor, group_size: int) -> Tensor:
    """Mean over groups of the within-group std (Bessel-corrected) of ``values`` (B,): a 0-dim tensor.

    >>> group_std(torch.tensor([0.0, 1.0, 5.0, 5.0]), 2)
    tensor(0.3536)
    """
    return _groups(values, group_size).std(dim=1).mean()


def zero_advantage_fraction(advantages: Tensor, group_size: int) -> Tensor:
    """Share of groups whose advantages are all exactly 0 (no learning signal): a 0-dim tensor."""
    return (_groups(advantages, group_size) == 0).all(dim=1).float().mean()


def within_group_correlation(total: Tensor, component: Tensor, group_size: int) -> Tensor:
    """Pearson correlation of ``total`` and ``component`` after removing each group's mean (what GRPO sees).

    Both (B,), group-contiguous. Returns a 0-dim tensor; NaN when either has no within-group spread.

    >>> within_group_correlation(torch.tensor([1.0, 0.0, 3.0, 2.0]), torch.tensor([1.0, 0.0, 1.0, 0.0]), 2)
    tensor(1.)
    """
    t, c = _groups(total, group_size), _groups(component, group_size)
    t = (t - t.mean(dim=1, keepdim=True)).flatten()
    c = (c - c.mean(dim=1, keepdim=True)).flatten()
    denom = t.norm() * c.norm()
    return (t @ c) / denom if bool(denom > 0) else torch.tensor(float("nan"))


def simulate_rm_mapping(*, n_groups: int = 2000, group_size: int = 8, match_rate: float = 0.6,
                        rm_center: float = 6.0, rm_spread: float = 1.0, alpha: float = 0.8, beta: float = 0.2,
                        rm_min: float = -6.0, rm_max: float = 10.0, seed: int = 0) -> dict[str, float]:
    """Within-group correlation of the total reward with the match term, with R_phi raw vs mapped to [0, 1].

    Each rollout matches the reference with probability ``match_rate``; its R_phi score is
    ``rm_center + rm_spread * N(0, 1)``, independent of the match (the worst case: a reward model that does not
    see correctness). Reward ``alpha * R_phi + beta * match``. Returns ``{"raw": corr, "mapped": corr}``.
    """
    g = torch.Generator().manual_seed(seed)
    match = (torch.rand(n_groups * group_size, generator=g) < match_rate).float()  # (B,)
    rm = rm_center + rm_spread * torch.randn(n_groups * group_size, generator=g)  # (B,)
    out = {}
    for name, r in (("raw", rm), ("mapped", rescale_rm_scores(rm, rm_min, rm_max))):
        out[name] = float(within_group_correlation(alpha * r + beta * match, match, group_size))
    return out
