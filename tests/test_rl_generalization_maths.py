"""Pure maths of issue 21: difficulty filtering, R_φ normalised before mixing, right/wrong rollout pairs and
R_φ's ranking accuracy on them (hand-computed values)."""

from __future__ import annotations

import math

import pytest
import torch

from medgr2.rl.difficulty import group_accuracy, informative_fraction, informative_groups, kept_rows
from medgr2.rl.preference_pairs import pairwise_ranking_accuracy, right_wrong_pairs
from medgr2.rl.rm_normalize import normalization_keys, normalize_within

# three groups of G=3: mixed, all right, all wrong
MATCH = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])


def test_only_groups_whose_rollout_accuracy_is_strictly_between_0_and_1_are_informative():
    assert group_accuracy(MATCH, 3).tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert informative_groups(MATCH, 3).tolist() == [True, False, False]
    assert float(informative_fraction(MATCH, 3)) == pytest.approx(1 / 3)
    assert float(informative_fraction(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)) == 1.0


def test_kept_rows_are_the_whole_groups_in_order():
    assert kept_rows(torch.tensor([True, False, True]), 3).tolist() == [0, 1, 2, 6, 7, 8]
    assert kept_rows(torch.tensor([False, False]), 4).numel() == 0


def test_difficulty_functions_refuse_partial_groups_and_non_bool_masks():
    with pytest.raises(ValueError, match="whole groups of 4"):
        group_accuracy(MATCH, 4)
    with pytest.raises(ValueError, match="bool"):
        kept_rows(torch.tensor([1, 0]), 2)


def test_normalize_within_z_scores_each_set_and_maps_a_constant_set_to_zero():
    z = normalize_within(torch.tensor([1.0, 3.0, 2.0, 2.0, 2.0, 10.0, 0.0, 5.0]), [0, 0, 1, 1, 1, 2, 2, 2])
    assert z[:2].tolist() == pytest.approx([-1.0, 1.0])
    assert z[2:5].tolist() == [0.0, 0.0, 0.0]  # no preference within the set: no advantage from R_φ
    g = torch.tensor([10.0, 0.0, 5.0])
    assert z[5:].tolist() == pytest.approx(((g - g.mean()) / g.std(unbiased=False)).tolist())
    # z-scores do not depend on R_φ's scale or offset: only its ordering and relative spacing within the set
    assert normalize_within(3 * torch.tensor([1.0, 3.0]) - 7, [0, 0]).tolist() == pytest.approx([-1.0, 1.0])


def test_normalize_within_keeps_nan_to_the_set_it_came_from():
    z = normalize_within(torch.tensor([math.nan, 1.0, 1.0, 3.0]), ["a", "a", "b", "b"])
    assert torch.isnan(z[:2]).all() and z[2:].tolist() == pytest.approx([-1.0, 1.0])


def test_normalization_keys_are_the_prompt_or_the_question_type():
    recs = [{"question_type": "Modality Recognition"}] * 2 + [{"question_type": "Disease Diagnosis"}] * 2
    assert normalization_keys("none", recs, 2) is None
    assert normalization_keys("group", recs, 2) == [0, 0, 1, 1]
    assert normalization_keys("qtype", recs, 2) == ["Modality Recognition"] * 2 + ["Disease Diagnosis"] * 2
    with pytest.raises(ValueError, match="rm_normalize must be one of"):
        normalization_keys("batch", recs, 2)


def test_right_wrong_pairs_pair_within_a_prompt_without_reusing_a_rollout():
    correct = [[True, False, True, False], [True, True], [None, False], [True, None, True]]
    pairs = right_wrong_pairs(correct, max_pairs=3, seed=1)
    assert {p for p, _, _ in pairs} == {0, 3}  # all right / all wrong prompts give no pair
    assert sum(p == 0 for p, _, _ in pairs) == 2 and sum(p == 3 for p, _, _ in pairs) == 1
    for p, r, w in pairs:
        assert correct[p][r] is True and correct[p][w] is not True
    used = [(p, i) for p, r, w in pairs for i in (r, w)]
    assert len(used) == len(set(used))
    assert len(right_wrong_pairs(correct, max_pairs=1)) == 2
    assert right_wrong_pairs(correct, max_pairs=3, seed=1) == pairs  # seeded


def test_pairwise_ranking_accuracy_counts_pairs_within_a_prompt_and_ties_as_half():
    # prompt 0: right 0.9 vs wrong 0.1 -> 1; prompt 1: right {0.5, 0.2} vs wrong {0.5} -> 0.5 + 0
    acc, n = pairwise_ranking_accuracy([0.9, 0.1, 0.5, 0.5, 0.2], [True, False, True, False, True], [0, 0, 1, 1, 1])
    assert (acc, n) == (pytest.approx(1.5 / 3), 3)
    # a wrong rollout of another prompt is never compared
    acc, n = pairwise_ranking_accuracy([0.0, 1.0], [True, False], ["p", "q"])
    assert math.isnan(acc) and n == 0
    # NaN scores are left out; None (no answer) counts as wrong
    acc, n = pairwise_ranking_accuracy([1.0, math.nan, 0.0], [True, False, None], [0, 0, 0])
    assert (acc, n) == (1.0, 1)
    with pytest.raises(ValueError, match="differ in length"):
        pairwise_ranking_accuracy([1.0], [True, False], [0, 0])
