"""Reward-model metrics and the held-out split, on hand-computed values."""

from __future__ import annotations

import math

import pytest

from medgr2.data.grade_transforms import image_swap_rows, split_by_source, wrong_letter_probes
from medgr2.evaluation.reward_metrics import (
    kendall,
    paired_scores,
    pairwise_accuracy,
    per_grade_means,
    regression_metrics,
    separation_accuracy,
    spearman,
)


def test_spearman_by_hand() -> None:
    # d = (0, 0, 1, 1): rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    assert spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    # Tied grades get average ranks (3.5, 3.5, 1.5, 1.5): rho = 4 / sqrt(4 * 5)
    assert spearman([4, 3, 2, 1], [10, 10, 0, 0]) == pytest.approx(4 / math.sqrt(20))
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1], [1]))


def test_kendall_tau_b_by_hand() -> None:
    # 2 concordant pairs, 1 discordant of 3: tau = 1/3
    assert kendall([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # 4 concordant, 0 discordant, 2 pairs tied in the grade: tau_b = 4 / sqrt((6 - 2) * 6)
    assert kendall([4, 3, 2, 1], [10, 10, 0, 0]) == pytest.approx(4 / math.sqrt(24))
    assert math.isnan(kendall([2, 2], [1, 2]))


def test_separation_accuracy_by_hand() -> None:
    # Threshold (6 + 0) / 2 = 3: right, wrong (a good one at 2), wrong (a bad one at 4), right.
    assert separation_accuracy([9.0, 2.0, 4.0, -5.0], [10, 6, 0, -6]) == pytest.approx(0.5)
    # Items strictly between lo and hi are ignored; an explicit threshold is used as given.
    assert separation_accuracy([9.0, -9.0, 1.0], [10, 3, -6]) == pytest.approx(1.0)
    assert separation_accuracy([9.0, 1.0], [10, -6], threshold=0.5) == pytest.approx(0.5)
    assert math.isnan(separation_accuracy([1.0], [3.0]))


def test_pairwise_accuracy_counts_ties_half() -> None:
    assert pairwise_accuracy([3.0, 1.0, 2.0, 0.0], [1.0, 2.0, 2.0, -1.0]) == pytest.approx(0.625)
    assert math.isnan(pairwise_accuracy([], []))
    with pytest.raises(ValueError):
        pairwise_accuracy([1.0], [1.0, 2.0])


def test_paired_scores_matches_by_key_and_drops_unpaired() -> None:
    scores = [5.0, 1.0, 7.0, 2.0, 9.0]
    kinds = ["original", "wrong_letter", "original", "wrong_letter", "original"]
    keys = ["a", "a", "b", "b", "c"]
    assert paired_scores(scores, kinds, keys, "original", "wrong_letter") == ([5.0, 7.0], [1.0, 2.0])


def test_regression_metrics_by_hand() -> None:
    m = regression_metrics([9.0, 5.0, 1.0, -4.0], [10.0, 6.0, 0.0, -6.0])
    assert m["mse"] == pytest.approx((1 + 1 + 1 + 4) / 4)
    assert m["mae"] == pytest.approx((1 + 1 + 1 + 2) / 4)
    assert m["spearman"] == pytest.approx(1.0) and m["kendall"] == pytest.approx(1.0)
    assert m["sep_acc"] == pytest.approx(1.0) and m["n"] == 4
    assert per_grade_means([1.0, 3.0, 5.0], ["a", "a", "b"]) == {"a": 2.0, "b": 5.0}


def test_split_by_source_keeps_every_record_on_one_side_and_ignores_order() -> None:
    ids = [f"r{i // 4}" for i in range(400)]  # 100 records x 4 grades
    train, val = split_by_source(ids, 0.1, seed=0)
    assert sorted(train + val) == list(range(400))
    assert {ids[i] for i in train}.isdisjoint({ids[i] for i in val})
    assert len({ids[i] for i in val}) == 10
    held = {ids[i] for i in val}
    shuffled = list(reversed(ids))
    _, val2 = split_by_source(shuffled, 0.1, seed=0)
    assert {shuffled[i] for i in val2} == held
    assert {ids[i] for i in split_by_source(ids, 0.1, seed=1)[1]} != held
    assert len({ids[i] for i in split_by_source(ids, 0.5, seed=0, max_val_sources=3)[1]}) == 3


def test_wrong_letter_probe_keeps_the_rationale_and_changes_only_the_letter() -> None:
    row = {"grade": "original", "source_id": "s1", "options": ["CT", "MRI", "US"], "id": "s1#original",
           "response": "<think>CT image. The answer is CT.</think><answer>A</answer>", "target": 10.0}
    other = {**row, "grade": "deletion", "response": "<think>CT</think><answer>A</answer>"}
    probes = wrong_letter_probes([row, other])
    assert len(probes) == 1
    p = probes[0]
    assert p["grade"] == "wrong_letter" and math.isnan(p["target"]) and p["source_id"] == "s1"
    assert p["response"].startswith("<think>CT image. The answer is CT.</think><answer>")
    assert p["response"][-10] in "BC"
    assert wrong_letter_probes([row]) == probes  # deterministic


def _original(sid: str, image: bytes | None) -> dict:
    return {"id": f"{sid}#original", "source_id": sid, "grade": "original", "target": 10.0,
            "response": f"<think>{sid} rationale</think><answer>A</answer>", "options": ["x", "y"],
            "image": None if image is None else {"bytes": image, "path": None}, "provenance": "{}"}


def test_image_swap_rows_keep_the_response_and_take_another_records_picture() -> None:
    rows = [_original("r0", b"pic0"), _original("r1", b"pic1"), _original("r2", b"pic0"),  # r2: r0's picture
            _original("r3", b"pic3"), _original("r4", None),  # r4: no image, nothing to swap
            {**_original("r1", b"pic1"), "grade": "synonym"}]
    out = image_swap_rows(rows, seed=3, target=-6.0)
    assert [r["source_id"] for r in out] == ["r0", "r1", "r2", "r3"]
    own = {r["source_id"]: r for r in rows if r["grade"] == "original"}
    for r in out:
        assert r["grade"] == "image_swap" and r["target"] == -6.0 and r["id"] == f"{r['source_id']}#image_swap"
        assert r["response"] == own[r["source_id"]]["response"]
        assert r["image"] is not None and r["image"]["bytes"] != own[r["source_id"]]["image"]["bytes"]
    assert out == image_swap_rows(list(reversed(rows)), seed=3, target=-6.0)  # per record, not per row order
    half = image_swap_rows(rows, seed=3, target=-6.0, rate=0.5)
    assert {r["source_id"] for r in half} < {r["source_id"] for r in out}
    assert image_swap_rows(rows[:1], seed=3) == []  # one record: no other picture
