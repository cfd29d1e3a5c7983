"""R_φ as an RL reward, normalised before mixing: z-score the reward model's scores within a group (the G
rollouts of one prompt) or within a question type, then ``alpha * z + beta * match``.

Why: GRPO learns only from within-group differences. On its own scale R_φ's within-group spread depends on how
sure the reward model is about a prompt, so prompts R_φ is unsure about barely move the policy and prompts where
it has a strong (possibly wrong) preference dominate. Normalising fixes R_φ's within-group spread to 1 wherever
it has any, so ``alpha`` / ``beta`` mean the same trade-off on every prompt. Per question type: one scale per
kind of question (R_φ's scores differ in level between, e.g., modality recognition and lesion grading).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["NORMALIZE_CHOICES", "normalization_keys", "normalize_within"]

NORMALIZE_CHOICES = ("none", "group", "qtype")


def normalize_within(values: Tensor, keys: Sequence[Hashable], eps: float = 1e-6) -> Tensor:
    """(N,) ``values`` z-scored within each set of rows sharing a key: ``(v - mean) / std`` (population std).

    A set whose values are all equal (std <= ``eps``), or a single row, maps to 0: no preference, rather than a
    division by 0. NaN in a set makes the whole set NaN (the caller's NaN policy sees it; nothing is invented).

    >>> normalize_within(torch.tensor([1.0, 3.0, 5.0, 5.0]), [0, 0, 1, 1])
    tensor([-1.,  1.,  0.,  0.])
    """
    v = torch.as_tensor(values, dtype=torch.float32)
    if v.dim() != 1 or v.shape[0] != len(keys):
        raise ValueError(f"values must be 1-D with one key per row, got shape {tuple(v.shape)} and {len(keys)} keys")
    out = torch.empty_like(v)
    index: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        index.setdefault(k, []).append(i)
    for rows in index.values():
        idx = torch.tensor(rows, device=v.device)
        x = v[idx]  # (n_k,)
        if bool(torch.isnan(x).any()):
            out[idx] = math.nan
            continue
        std = x.std(unbiased=False)
        out[idx] = (x - x.mean()) / std if float(std) > eps else torch.zeros_like(x)
    return out


def normalization_keys(mode: str, records: Sequence[Mapping[str, Any]], group_size: int) -> list[Hashable] | None:
    """The normalisation sets of N rows (``records[i]`` is the record row ``i`` answers, group-contiguous):
    ``group`` -> the prompt's index (``i // G``), ``qtype`` -> the record's question type, ``none`` -> None."""
    if mode not in NORMALIZE_CHOICES:
        raise ValueError(f"rm_normalize must be one of {NORMALIZE_CHOICES}, got {mode!r}")
    if mode == "none":
        return None
    if mode == "group":
        return [i // group_size for i in range(len(records))]
    return [str(r.get("question_type", "?")) for r in records]
