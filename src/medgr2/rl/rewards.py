"""The MedGR2 GRPO reward (paper Eq. 3): ``r(a') = alpha * R_phi(I, q, a') + beta * 1[extract(a') = extract(a)]``.

``R_phi`` is the learned reward model's score of the completion (trained on grades in [-6, 10]); the
indicator rewards an exact option-letter match with the reference answer. An optional format term
(Med-R1 style) can be added with ``format_weight``; the paper uses none (weight 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["composite_reward", "composite_reward_components", "rescale_rm_scores"]


def rescale_rm_scores(rm_scores: Tensor, rm_min: float = -6.0, rm_max: float = 10.0) -> Tensor:
    """Map reward-model scores from ``[rm_min, rm_max]`` to ``[0, 1]``, clamping outside values.

    The default range is the reward model's training grade range (hallucinated -6 ... original 10), so
    after rescaling ``R_phi`` lives on the same scale as the 0/1 match term. NaN stays NaN.

    >>> rescale_rm_scores(torch.tensor([-6.0, 2.0, 10.0, 20.0]))
    tensor([0.0000, 0.5000, 1.0000, 1.0000])
    """
    if not rm_max > rm_min:
        raise ValueError(f"rm_max must be > rm_min, got rm_min={rm_min}, rm_max={rm_max}")
    return ((rm_scores - rm_min) / (rm_max - rm_min)).clamp(0.0, 1.0)  # clamp keeps NaN as NaN


def _norm_letter(x: str | None) -> str | None:
    if x is None:
        return None
    x = x.strip().upper()
    return x or None  # an empty string is no answer either


def composite_reward_components(
    rm_scores: Tensor | Sequence[float],
    predicted_letters: Sequence[str | None],
    reference_letters: Sequence[str | None],
    *,
    alpha: float = 0.8,
    beta: float = 0.2,
    format_scores: Tensor | Sequence[float] | None = None,
    format_weight: float = 0.0,
    rescale_rm: bool = False,
    rm_min: float = -6.0,
    rm_max: float = 10.0,
) -> dict[str, Tensor]:
    """The reward and its parts, for logging. Arguments as in :func:`composite_reward`.

    Returns:
        dict of (B,) tensors on the device of ``rm_scores``: ``rm`` (``R_phi`` as used, i.e. after the
        optional rescaling, unweighted), ``match`` (0/1), ``format`` (format scores, zeros if not given)
        and ``total = alpha * rm + beta * match + format_weight * format``.
    """
    rm = torch.as_tensor(rm_scores)
    if not torch.is_floating_point(rm):
        rm = rm.float()
    if rm.dim() != 1:
        raise ValueError(f"rm_scores must be 1-D (B,), got shape {tuple(rm.shape)}")
    n = rm.shape[0]
    if len(predicted_letters) != n or len(reference_letters) != n:
        raise ValueError(
            f"length mismatch: rm_scores {n}, predicted_letters {len(predicted_letters)}, "
            f"reference_letters {len(reference_letters)}"
        )
    if format_weight != 0.0 and format_scores is None:
        raise ValueError("format_scores are required when format_weight != 0")

    # An infinite score is a broken reward model (an overflow), like NaN: make it NaN so the caller's NaN policy
    # (skip the batch or stop) sees it, instead of rescaling clamping it to the best score or the loss going NaN.
    rm = rm.masked_fill(torch.isinf(rm), math.nan)
    if rescale_rm:
        rm = rescale_rm_scores(rm, rm_min, rm_max)
    # A None prediction (unparseable completion) never matches, not even a None reference.
    hits = [
        p is not None and p == r
        for p, r in zip(
            map(_norm_letter, predicted_letters), map(_norm_letter, reference_letters), strict=True
        )
    ]
    match = torch.tensor(hits, dtype=rm.dtype, device=rm.device)  # (B,)
    if format_scores is None:
        fmt = torch.zeros_like(rm)  # (B,)
    else:
        fmt = torch.as_tensor(format_scores, dtype=rm.dtype, device=rm.device)  # (B,)
        if fmt.shape != rm.shape:
            raise ValueError(f"format_scores must have shape {tuple(rm.shape)}, got {tuple(fmt.shape)}")
    total = alpha * rm + beta * match + format_weight * fmt  # (B,)
    return {"rm": rm, "match": match, "format": fmt, "total": total}


def composite_reward(
    rm_scores: Tensor | Sequence[float],
    predicted_letters: Sequence[str | None],
    reference_letters: Sequence[str | None],
    *,
    alpha: float = 0.8,
    beta: float = 0.2,
    format_scores: Tensor | Sequence[float] | None = None,
    format_weight: float = 0.0,
    rescale_rm: bool = False,
    rm_min: float = -6.0,
    rm_max: float = 10.0,
) -> Tensor:
    """MedGR2 reward, paper Eq. 3: ``alpha * R_phi + beta * 1[pred == ref] (+ format_weight * format)``.

    Args:
        rm_scores: (B,) reward-model scores ``R_phi`` of each completion.
        predicted_letters: option letter extracted from each completion (``None`` = unparseable, never
            matches).
        reference_letters: the reference answer letter of each completion's prompt.
        alpha: weight of the reward-model score (paper: 0.8).
        beta: weight of the exact-match indicator (paper: 0.2).
        format_scores: (B,) optional format rewards (e.g. :func:`~medgr2.data.response_format.format_reward`);
            required when ``format_weight != 0``.
        format_weight: weight of the format term (0 = the paper's reward).
        rescale_rm: first map ``R_phi`` from ``[rm_min, rm_max]`` to ``[0, 1]`` (clamped), so the two terms
            share a scale.
        rm_min: lower end of the reward model's score range.
        rm_max: upper end of the reward model's score range.

    Returns:
        (B,) rewards. NaN (and inf, made NaN) in ``rm_scores`` passes through to the output on purpose: the
        caller flags those samples (``group_advantages`` refuses NaN and names the indices) rather than this function
        silently inventing a value.

    >>> composite_reward(torch.tensor([10.0, 5.0]), ["A", None], ["A", "B"])
    tensor([8.2000, 4.0000])
    """
    return composite_reward_components(
        rm_scores,
        predicted_letters,
        reference_letters,
        alpha=alpha,
        beta=beta,
        format_scores=format_scores,
        format_weight=format_weight,
        rescale_rm=rescale_rm,
        rm_min=rm_min,
        rm_max=rm_max,
    )["total"]
