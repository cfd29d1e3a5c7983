"""D_pref from the policy's own rollouts (paper Algorithm 1, line 12): pairs of a right and a wrong rollout of
the same prompt, graded against the reference answer; and the metric that says whether R_φ can tell them apart.

Pure functions on lists and tensors; the sampling and R_φ training live in :mod:`medgr2.pipeline.reward_pairs`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

__all__ = ["pairwise_ranking_accuracy", "right_wrong_pairs"]


def right_wrong_pairs(correct: Sequence[Sequence[bool | None]], max_pairs: int = 1,
                      seed: int = 0) -> list[tuple[int, int, int]]:
    """``(prompt, right rollout, wrong rollout)`` index triples: for each prompt whose rollouts include at least
    one right (True) and one wrong (False or None: no answer) rollout, up to ``max_pairs`` pairs drawn without
    repeating a rollout (seeded). Prompts whose rollouts are all right or all wrong give no pair.

    >>> right_wrong_pairs([[True, False], [True, True], [None, True, False]], max_pairs=2)
    [(0, 0, 1), (2, 1, 0)]
    """
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    rng = random.Random(seed)
    out = []
    for p, group in enumerate(correct):
        right = [i for i, c in enumerate(group) if c is True]
        wrong = [i for i, c in enumerate(group) if c is not True]
        rng.shuffle(right)
        rng.shuffle(wrong)
        out += [(p, r, w) for r, w in zip(right, wrong, strict=False)][:max_pairs]
    return out


def pairwise_ranking_accuracy(scores: Tensor | Sequence[float], correct: Sequence[bool | None] | Tensor,
                              groups: Sequence[Hashable]) -> tuple[float, int]:
    """R_φ's accuracy at ranking a prompt's right rollouts above its wrong ones.

    Over every (right, wrong) pair of rows that share a group (the same prompt), the share with
    ``score[right] > score[wrong]``; a tie counts one half (a reward that cannot tell them apart scores 0.5).
    Returns ``(accuracy, number of pairs)``; accuracy is NaN when no group has both a right and a wrong row.
    Rows with a NaN score are left out.

    >>> pairwise_ranking_accuracy([0.9, 0.1, 0.5, 0.5, 0.2], [True, False, True, False, True], [0, 0, 1, 1, 1])
    (0.5, 3)
    """
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    c = [bool(x) if x is not None else False for x in (correct.tolist() if isinstance(correct, Tensor) else correct)]
    if not (s.shape[0] == len(c) == len(groups)):
        raise ValueError(f"scores, correct and groups differ in length: {s.shape[0]}, {len(c)}, {len(groups)}")
    by: dict[Hashable, tuple[list[float], list[float]]] = {}
    for v, ok, g in zip(s.tolist(), c, groups, strict=True):
        if math.isnan(v):
            continue
        by.setdefault(g, ([], []))[0 if ok else 1].append(v)
    wins, n = 0.0, 0
    for right, wrong in by.values():
        for r in right:
            for w in wrong:
                wins += 1.0 if r > w else (0.5 if r == w else 0.0)
                n += 1
    return (wins / n if n else math.nan), n
