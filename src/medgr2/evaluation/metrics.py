"""Pure evaluation metrics for multiple-choice VQA over plain Python lists.

Predictions are option letters or ``None`` (the completion could not be parsed); an unparseable
prediction always counts as wrong. Every accuracy should be reported beside its chance and majority
baselines (:func:`chance_accuracy`, :func:`majority_accuracy`): with 2-4 options and unbalanced answers,
"always A" can look like learning.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

__all__ = [
    "NONE_LABEL",
    "accuracy",
    "balanced_accuracy",
    "chance_accuracy",
    "error_transitions",
    "grouped_accuracy",
    "macro_f1",
    "majority_accuracy",
    "metric_key",
    "option_auc",
    "summarize",
]

LETTERS = "ABCD"
# Class name for an unparseable prediction in F1: it is never a gold class, so it only costs recall.
NONE_LABEL = "none"


def _check_len(**seqs: Sequence) -> int:
    lengths = {name: len(s) for name, s in seqs.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"length mismatch: {lengths}")
    return next(iter(lengths.values()))


def _correct(pred: Sequence[str | None], gold: Sequence[str]) -> list[bool]:
    return [p is not None and p == g for p, g in zip(pred, gold, strict=True)]


def accuracy(pred: Sequence[str | None], gold: Sequence[str]) -> float:
    """Share of predictions equal to the gold letter (``None`` = wrong); NaN for no items.

    >>> accuracy(["A", None, "C"], ["A", "B", "D"])
    0.3333333333333333
    """
    if _check_len(pred=pred, gold=gold) == 0:
        return math.nan
    return float(np.mean(_correct(pred, gold)))


def grouped_accuracy(
    pred: Sequence[str | None], gold: Sequence[str], groups: Sequence[Hashable]
) -> dict[Hashable, float]:
    """Accuracy within each group (e.g. modality or question type), keys in sorted order.

    >>> grouped_accuracy(["A", "B", "A"], ["A", "A", "A"], ["CT", "CT", "MRI"])
    {'CT': 0.5, 'MRI': 1.0}
    """
    _check_len(pred=pred, gold=gold, groups=groups)
    hits: dict[Hashable, list[bool]] = {}
    for ok, g in zip(_correct(pred, gold), groups, strict=True):
        hits.setdefault(g, []).append(ok)
    return {g: float(np.mean(hits[g])) for g in sorted(hits, key=str)}


def macro_f1(pred: Sequence[str | None], gold: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Macro F1 over the answer letters as classes.

    ``labels`` defaults to the gold classes present (sorted); an unparseable ``None`` prediction becomes
    the class ``"none"``, which is never averaged over but still costs its gold class recall. Classes with
    no true or predicted items score 0 (``zero_division=0``). NaN for no items.
    """
    if _check_len(pred=pred, gold=gold) == 0:
        return math.nan
    y_pred = [NONE_LABEL if p is None else p for p in pred]
    labels = sorted(set(gold)) if labels is None else list(labels)
    return float(f1_score(list(gold), y_pred, labels=labels, average="macro", zero_division=0))


def balanced_accuracy(pred: Sequence[str | None], gold: Sequence[str]) -> float:
    """Mean over gold classes of the recall of that class (robust to unbalanced answer letters).

    Computed directly rather than with sklearn, which warns when predictions hold classes (like ``None``)
    that never occur in ``gold``.

    >>> balanced_accuracy(["A", "A", "A", "B"], ["A", "A", "A", "A"])
    0.75
    """
    if _check_len(pred=pred, gold=gold) == 0:
        return math.nan
    per_class: dict[str, list[bool]] = {}
    for ok, g in zip(_correct(pred, gold), gold, strict=True):
        per_class.setdefault(g, []).append(ok)
    return float(np.mean([np.mean(v) for v in per_class.values()]))


def option_auc(option_probs: Sequence[Sequence[float] | None], gold_index: Sequence[int]) -> float:
    """ROC AUC of each option's probability as a score for "this option is the correct one".

    All (question, option) pairs are pooled: the gold option of each question is a positive, every other
    option a negative. Questions may have different numbers of options; ``None`` entries (unknown) are left
    out. NaN when only one class is present
    (e.g. no items, or only one-option questions).
    """
    _check_len(option_probs=option_probs, gold_index=gold_index)
    scores: list[float] = []
    labels: list[int] = []
    for probs, gi in zip(option_probs, gold_index, strict=True):
        if probs is None:  # unknown for this question (see evaluation.evaluate.option_probs): left out
            continue
        if not 0 <= gi < len(probs):
            raise ValueError(f"gold index {gi} out of range for {len(probs)} options")
        scores.extend(float(p) for p in probs)
        labels.extend(int(j == gi) for j in range(len(probs)))
    if len(set(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, scores))


def chance_accuracy(n_options: Sequence[int]) -> float:
    """Expected accuracy of uniform guessing: mean of ``1 / n_options``.

    >>> chance_accuracy([2, 4])
    0.375
    """
    if len(n_options) == 0:
        return math.nan
    if min(n_options) < 1:
        raise ValueError(f"n_options must be >= 1, got {min(n_options)}")
    return float(np.mean([1.0 / n for n in n_options]))


def majority_accuracy(gold: Sequence[str]) -> float:
    """Accuracy of always answering the most common gold letter.

    >>> majority_accuracy(["A", "B", "A", "C"])
    0.5
    """
    if len(gold) == 0:
        return math.nan
    return Counter(gold).most_common(1)[0][1] / len(gold)


def error_transitions(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, int]:
    """Counts of per-item outcome changes from model ``a`` to model ``b`` (paper Figure 5).

    >>> error_transitions([True, False, False, True], [True, True, False, False])
    {'correct_to_correct': 1, 'wrong_to_correct': 1, 'correct_to_wrong': 1, 'wrong_to_wrong': 1}
    """
    _check_len(correct_a=correct_a, correct_b=correct_b)
    c = Counter((bool(a), bool(b)) for a, b in zip(correct_a, correct_b, strict=True))
    return {
        "correct_to_correct": c[(True, True)],
        "wrong_to_correct": c[(False, True)],
        "correct_to_wrong": c[(True, False)],
        "wrong_to_wrong": c[(False, False)],
    }


def metric_key(name: str) -> str:
    """Make a group name a valid MLflow metric key part: spaces and other odd characters become ``_``.

    >>> metric_key("Lesion Grading")
    'Lesion_Grading'
    >>> metric_key("CT(Computed Tomography)")
    'CT_Computed_Tomography_'
    """
    # MLflow keys allow alphanumerics, "_", "-", ".", " " and "/"; spaces are legal but awkward in keys,
    # and "/" would add a nesting level, so both go too.
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name))


def summarize(
    pred: Sequence[str | None],
    gold: Sequence[str],
    n_options: Sequence[int],
    modality: Sequence[str],
    question_type: Sequence[str],
    option_probs: Sequence[Sequence[float]] | None = None,
) -> dict[str, float]:
    """All evaluation metrics as a flat dict of MLflow-ready names.

    Keys: ``acc``, ``f1`` (macro), ``bal_acc``, ``auc`` (NaN when ``option_probs`` is not given),
    ``chance``, ``majority``, ``parse_rate`` (share of parseable predictions), and
    ``acc/modality/<M>`` and ``acc/qtype/<Q>`` for every modality / question type present, with group
    names passed through :func:`metric_key`.
    """
    _check_len(pred=pred, gold=gold, n_options=n_options, modality=modality, question_type=question_type)
    if option_probs is None:
        auc = math.nan
    else:
        auc = option_auc(option_probs, [LETTERS.index(g) for g in gold])
    out: dict[str, float] = {
        "acc": accuracy(pred, gold),
        "f1": macro_f1(pred, gold),
        "bal_acc": balanced_accuracy(pred, gold),
        "auc": auc,
        "chance": chance_accuracy(n_options),
        "majority": majority_accuracy(gold),
        "parse_rate": float(np.mean([p is not None for p in pred])) if len(pred) else math.nan,
    }
    for prefix, groups in (("acc/modality", modality), ("acc/qtype", question_type)):
        for g, acc in grouped_accuracy(pred, gold, groups).items():
            out[f"{prefix}/{metric_key(str(g))}"] = acc
    return out
