"""Teacher-forced statistics on the answer letter and on the yes/no verdicts of verify rationales."""

from __future__ import annotations

import math

import torch

from medgr2.rl.lm_loss import IGNORE, choice_token_stats


def test_verdict_accuracy_counts_only_labelled_choice_tokens():
    V, yes, no = 10, 3, 4
    labels = torch.tensor([[IGNORE, 5, yes, 6, no], [IGNORE, IGNORE, no, yes, IGNORE]])  # (2, 5)
    logits = torch.zeros(2, 5, V)
    # position t predicts token t+1: rows/positions that precede a verdict
    logits[0, 1, yes] = 2.0  # right (yes)
    logits[0, 3, yes] = 2.0  # wrong (target no)
    logits[1, 1, no] = 2.0  # right (no)
    logits[1, 2, yes] = 2.0  # right (yes)
    logits[0, 0, no] = 9.0  # predicts an unlabelled token: ignored
    stats = choice_token_stats(logits, labels, torch.tensor([yes, no]))
    assert stats["check_acc"].item() == 0.75
    p_right = math.exp(2) / (math.exp(2) + 1)
    expected = -(3 * math.log(p_right) + math.log(1 - p_right)) / 4
    assert abs(stats["check_loss"].item() - expected) < 1e-6


def test_no_verdict_tokens_give_nan_not_zero():
    stats = choice_token_stats(torch.zeros(1, 3, 5), torch.tensor([[IGNORE, 1, 2]]), torch.tensor([3, 4]))
    assert math.isnan(stats["check_acc"].item()) and math.isnan(stats["check_loss"].item())
