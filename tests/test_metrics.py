"""Evaluation metrics on hand-computed examples."""

from __future__ import annotations

import doctest
import math

import pytest

import medgr2.evaluation.metrics as metrics_mod
from medgr2.evaluation.metrics import (
    accuracy,
    balanced_accuracy,
    chance_accuracy,
    error_transitions,
    grouped_accuracy,
    macro_f1,
    majority_accuracy,
    metric_key,
    option_auc,
    summarize,
)


def test_doctests() -> None:
    assert doctest.testmod(metrics_mod).failed == 0


def test_accuracy() -> None:
    assert accuracy(["A", "B", None], ["A", "B", "C"]) == pytest.approx(2 / 3)
    assert accuracy([None], ["A"]) == 0.0
    assert math.isnan(accuracy([], []))
    with pytest.raises(ValueError, match="length mismatch"):
        accuracy(["A"], ["A", "B"])


def test_grouped_accuracy() -> None:
    got = grouped_accuracy(["A", "B", None, "D"], ["A", "C", "B", "D"], ["MRI", "CT", "CT", "MRI"])
    assert got == {"CT": 0.0, "MRI": 1.0}
    assert list(got) == ["CT", "MRI"]  # sorted keys


# 3-class example: gold A A B B C C, pred A B B B C None
#   A: TP 1, FP 0, FN 1 -> P 1,   R 1/2 -> F1 2/3
#   B: TP 2, FP 1, FN 0 -> P 2/3, R 1   -> F1 4/5
#   C: TP 1, FP 0, FN 1 -> P 1,   R 1/2 -> F1 2/3   (the None prediction is a miss for C)
GOLD3 = ["A", "A", "B", "B", "C", "C"]
PRED3 = ["A", "B", "B", "B", "C", None]


def test_macro_f1_hand_example() -> None:
    assert macro_f1(PRED3, GOLD3) == pytest.approx((2 / 3 + 4 / 5 + 2 / 3) / 3)  # 32/45
    # an explicit label list with an absent class D adds a zero-F1 class
    assert macro_f1(PRED3, GOLD3, labels=["A", "B", "C", "D"]) == pytest.approx((2 / 3 + 4 / 5 + 2 / 3) / 4)
    assert macro_f1(GOLD3, GOLD3) == 1.0


def test_macro_f1_none_is_not_a_class() -> None:
    # all unparseable: every gold class has F1 0, and "none" is never averaged in
    assert macro_f1([None, None], ["A", "B"]) == 0.0


def test_balanced_accuracy() -> None:
    # recalls A 1/2, B 2/2, C 1/2
    assert balanced_accuracy(PRED3, GOLD3) == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    # "always A" on 3 A + 1 B gets accuracy 3/4 but balanced accuracy 1/2
    assert balanced_accuracy(["A"] * 4, ["A", "A", "A", "B"]) == pytest.approx(0.5)


def test_option_auc() -> None:
    # positives (gold options): 0.5, 0.4 ; negatives: 0.3, 0.2, 0.6
    # pairs won: 0.5 beats 0.3, 0.2 (2); 0.4 beats 0.3, 0.2 (2) -> 4 / 6
    assert option_auc([[0.5, 0.3, 0.2], [0.6, 0.4]], [0, 1]) == pytest.approx(4 / 6)
    # a tie counts one half: positive 0.5 vs negatives 0.5, 0.1 -> (0.5 + 1) / 2
    assert option_auc([[0.5, 0.5, 0.1]], [0]) == pytest.approx(0.75)
    assert option_auc([[0.9, 0.1], [0.2, 0.8]], [0, 1]) == 1.0
    assert math.isnan(option_auc([[1.0]], [0]))  # only positives
    assert math.isnan(option_auc([], []))
    with pytest.raises(ValueError, match="out of range"):
        option_auc([[0.5, 0.5]], [2])


def test_baselines() -> None:
    assert chance_accuracy([2, 4, 4]) == pytest.approx((1 / 2 + 1 / 4 + 1 / 4) / 3)
    assert majority_accuracy(["A", "B", "A", "C"]) == pytest.approx(0.5)
    assert majority_accuracy(["D"]) == 1.0
    assert math.isnan(chance_accuracy([])) and math.isnan(majority_accuracy([]))


def test_error_transitions() -> None:
    a = [True, True, False, False, False, True]
    b = [True, False, True, False, True, True]
    assert error_transitions(a, b) == {
        "correct_to_correct": 2,
        "wrong_to_correct": 2,
        "correct_to_wrong": 1,
        "wrong_to_wrong": 1,
    }


def test_metric_key() -> None:
    assert metric_key("Other Biological Attributes") == "Other_Biological_Attributes"
    assert metric_key("X-Ray") == "X-Ray"


def test_summarize_hand_example() -> None:
    pred = ["A", "B", None, "C"]
    gold = ["A", "C", "B", "C"]
    n_options = [4, 3, 2, 4]
    modality = ["CT", "CT", "X-Ray", "MRI"]
    qtype = ["Lesion Grading", "Modality Recognition", "Lesion Grading", "Lesion Grading"]
    # gold indices 0, 2, 1, 2; positives 0.7, 0.3, 0.5, 0.6; negatives: five 0.1, two 0.2, two 0.5
    # 0.7 beats all 9; 0.3 beats 7; 0.5 beats 7 and ties 2 (+1); 0.6 beats all 9 -> 33 / 36
    probs = [[0.7, 0.1, 0.1, 0.1], [0.2, 0.5, 0.3], [0.5, 0.5], [0.1, 0.1, 0.6, 0.2]]
    got = summarize(pred, gold, n_options, modality, qtype, option_probs=probs)
    expected = {
        "acc": 2 / 4,
        # A: F1 1; B: TP 0 -> 0; C: P 1, R 1/2 -> 2/3
        "f1": (1 + 0 + 2 / 3) / 3,
        "bal_acc": (1 + 0 + 0.5) / 3,
        "auc": 33 / 36,
        "chance": (1 / 4 + 1 / 3 + 1 / 2 + 1 / 4) / 4,
        "majority": 2 / 4,
        "parse_rate": 3 / 4,
        "acc/modality/CT": 1 / 2,
        "acc/modality/MRI": 1.0,
        "acc/modality/X-Ray": 0.0,
        "acc/qtype/Lesion_Grading": 2 / 3,
        "acc/qtype/Modality_Recognition": 0.0,
    }
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v), k


def test_summarize_without_probs_gives_nan_auc() -> None:
    got = summarize(["A"], ["A"], [2], ["CT"], ["Disease Diagnosis"])
    assert math.isnan(got["auc"])
    assert got["acc"] == 1.0 and got["acc/qtype/Disease_Diagnosis"] == 1.0
