"""Within-group reward diagnostics and the measurement behind mapping R_phi's [-6, 10] to [0, 1]."""

from __future__ import annotations

import math

import pytest
import torch

from medgr2.rl.diagnostics import (
    group_std,
    simulate_rm_mapping,
    within_group_correlation,
    zero_advantage_fraction,
)


def test_group_std_is_the_mean_within_group_spread_not_the_batch_spread():
    x = torch.tensor([0.0, 0.0, 10.0, 10.0])  # large batch spread, none within groups
    assert group_std(x, 2).item() == 0.0
    assert group_std(torch.tensor([0.0, 2.0, 5.0, 5.0]), 2).item() == pytest.approx(math.sqrt(2) / 2)
    with pytest.raises(ValueError, match="whole groups of 3"):
        group_std(torch.zeros(4), 3)


def test_zero_advantage_fraction_counts_groups_without_signal():
    assert zero_advantage_fraction(torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 0.0]), 2).item() == pytest.approx(2 / 3)


def test_within_group_correlation_ignores_group_levels():
    total = torch.tensor([5.0, 4.0, -3.0, -4.0])  # levels differ wildly; within each group total follows comp
    comp = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert within_group_correlation(total, comp, 2).item() == pytest.approx(1.0)
    assert math.isnan(within_group_correlation(total, torch.ones(4), 2).item())


def test_raw_rphi_drowns_the_match_term_and_the_mapping_restores_it():
    # R_phi spread 1 point, 60% match, alpha 0.8, beta 0.2: the numbers docs/grpo.md reports.
    corr = simulate_rm_mapping(rm_spread=1.0, match_rate=0.6, seed=0)
    assert corr["raw"] == pytest.approx(0.11, abs=0.03)
    assert corr["mapped"] == pytest.approx(0.89, abs=0.03)
    # Analytic check: corr = sqrt(var(beta*match) / (var(alpha*rm) + var(beta*match))) for independent terms.
    var_m = 0.2**2 * 0.6 * 0.4
    assert corr["raw"] == pytest.approx(math.sqrt(var_m / (0.8**2 + var_m)), abs=0.03)
    assert corr["mapped"] == pytest.approx(math.sqrt(var_m / ((0.8 / 16) ** 2 + var_m)), abs=0.03)
