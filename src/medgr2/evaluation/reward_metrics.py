"""How well a reward model R_φ ranks responses: pure functions on score lists (no model, no stage wiring).

* :func:`spearman` / :func:`kendall`: rank correlation between predicted scores and the true grade values
  (ties in the grades are handled the usual way: average ranks / Kendall's tau-b);
* :func:`separation_accuracy`: accuracy of the rule ``score > threshold`` at telling good responses
  (target ≥ ``hi``, grades 10 and 6) from bad ones (target ≤ ``lo``, grades 0 and −6);
* :func:`pairwise_accuracy`: how often R_φ puts the better of two paired responses first — e.g. a correct
  rationale+answer above the same rationale with a wrong answer letter;
* :func:`regression_metrics`: all of the above plus MSE and MAE in one dict (what the reward stage logs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = ["kendall", "pairwise_accuracy", "paired_scores", "per_grade_means", "regression_metrics",
           "separation_accuracy", "spearman"]


def _arrays(pred: Sequence[float], true: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 1:
        raise ValueError(f"pred and true must be 1-D and of equal length, got {p.shape} and {t.shape}")
    return p, t


def spearman(pred: Sequence[float], true: Sequence[float]) -> float:
    """Spearman's rho (average ranks for ties); NaN with fewer than 2 items or a constant input.

    >>> spearman([1, 2, 3], [10, 20, 30]), spearman([3, 2, 1], [10, 20, 30])
    (1.0, -1.0)
    """
    p, t = _arrays(pred, true)
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(t) == 0:
        return math.nan
    return float(stats.spearmanr(p, t).statistic)


def kendall(pred: Sequence[float], true: Sequence[float]) -> float:
    """Kendall's tau-b (tie-corrected); NaN with fewer than 2 items or a constant input.

    >>> round(kendall([1, 2, 3], [1, 3, 2]), 4)
    0.3333
    """
    p, t = _arrays(pred, true)
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(t) == 0:
        return math.nan
    return float(stats.kendalltau(p, t).statistic)


def separation_accuracy(pred: Sequence[float], true: Sequence[float], hi: float = 6.0, lo: float = 0.0,
                        threshold: float | None = None) -> float:
    """Accuracy of ``pred > threshold`` at separating items with ``true >= hi`` from items with ``true <= lo``.

    Items with ``lo < true < hi`` are ignored. ``threshold`` defaults to the midpoint ``(hi + lo) / 2`` —
    a fixed cut on R_φ's own scale, the way a selection threshold τ uses it (not a cut tuned on the data).
    NaN when no item is on either side.

    >>> separation_accuracy([9.0, 2.0, 4.0, -5.0], [10, 6, 0, -6])
    0.5
    """
    p, t = _arrays(pred, true)
    keep = (t >= hi) | (t <= lo)
    if not keep.any():
        return math.nan
    cut = (hi + lo) / 2.0 if threshold is None else threshold
    return float(np.mean((p[keep] > cut) == (t[keep] >= hi)))


def pairwise_accuracy(better: Sequence[float], worse: Sequence[float]) -> float:
    """Share of pairs with ``better[i] > worse[i]``; a tie counts half (a coin flip would break it).

    NaN for no pairs.

    >>> pairwise_accuracy([3.0, 1.0, 2.0, 0.0], [1.0, 2.0, 2.0, -1.0])
    0.625
    """
    b, w = _arrays(better, worse)
    if len(b) == 0:
        return math.nan
    return float(np.mean((b > w) + 0.5 * (b == w)))


def paired_scores(scores: Sequence[float], kinds: Sequence[str], keys: Sequence[str], better: str,
                  worse: str) -> tuple[list[float], list[float]]:
    """Match items of kind ``better`` and ``worse`` by ``key``: ``(better_scores, worse_scores)`` aligned.

    Keys that lack either kind are left out (e.g. a held-out record whose original row was skipped).

    >>> paired_scores([1.0, 2.0, 3.0, 4.0], ["a", "b", "a", "b"], ["x", "x", "y", "z"], "a", "b")
    ([1.0], [2.0])
    """
    first: dict[str, float] = {}
    second: dict[str, float] = {}
    for s, kind, key in zip(scores, kinds, keys, strict=True):
        if kind == better:
            first[key] = float(s)
        elif kind == worse:
            second[key] = float(s)
    common = [k for k in first if k in second]
    return [first[k] for k in common], [second[k] for k in common]


def regression_metrics(pred: Sequence[float], true: Sequence[float], hi: float = 6.0,
                       lo: float = 0.0) -> dict[str, float]:
    """``mse``, ``mae``, ``spearman``, ``kendall``, ``sep_acc`` (see :func:`separation_accuracy`) and ``n``."""
    p, t = _arrays(pred, true)
    if len(p) == 0:
        return {"n": 0.0}
    return {
        "n": float(len(p)),
        "mse": float(np.mean((p - t) ** 2)),
        "mae": float(np.mean(np.abs(p - t))),
        "spearman": spearman(p, t),
        "kendall": kendall(p, t),
        "sep_acc": separation_accuracy(p, t, hi, lo),
    }


def per_grade_means(pred: Sequence[float], grades: Sequence[str]) -> Mapping[str, float]:
    """Mean predicted score per grade name (for logs: are the grades in the right order?)."""
    sums: dict[str, list[float]] = {}
    for s, g in zip(pred, grades, strict=True):
        sums.setdefault(g, []).append(float(s))
    return {g: float(np.mean(v)) for g, v in sums.items()}
