"""The report's statistics on known values: McNemar by hand, a fixed-seed bootstrap, interval coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medgr2.report.significance import (
    Estimate,
    accuracy_estimate,
    accuracy_from_values,
    bootstrap_means,
    combine,
    discordant,
    format_estimate,
    mcnemar_exact,
    paired_comparison,
    percentile_interval,
    verdict,
)


def test_mcnemar_exact_equals_the_hand_computed_binomial_tail():
    # 1 vs 6 discordant: P(X <= 1 | 7, 1/2) = (1 + 7) / 128; two-sided doubles it -> 16/128.
    assert mcnemar_exact(1, 6) == pytest.approx(16 / 128)
    assert mcnemar_exact(6, 1) == pytest.approx(16 / 128)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError, match="discordant counts"):
        mcnemar_exact(-1, 2)


def test_discordant_counts_a_hand_made_2x2_table():
    a = [1, 1, 1, 0, 0, 0, 1, 0]
    b = [1, 0, 0, 1, 1, 1, 1, 0]
    assert discordant(a, b) == (2, 3)  # only A: q2, q3; only B: q4, q5, q6


def test_bootstrap_with_a_fixed_seed_is_reproducible_and_equals_numpys_resampling():
    v = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=float)
    r1, r2 = bootstrap_means(v, 500, seed=7), bootstrap_means(v, 500, seed=7)
    assert np.array_equal(r1, r2)
    idx = np.random.default_rng(7).integers(0, 10, size=(500, 10))
    assert np.array_equal(r1, v[idx].mean(axis=1))
    assert not np.array_equal(r1, bootstrap_means(v, 500, seed=8))
    lo, hi = percentile_interval(r1)
    assert lo == pytest.approx(np.quantile(r1, 0.025)) and hi == pytest.approx(np.quantile(r1, 0.975))
    assert bootstrap_means(np.ones(5), 100).std() == 0.0


def test_one_seed_question_interval_matches_the_binomial_standard_error():
    rng = np.random.default_rng(0)
    correct = (rng.random(2000) < 0.8).astype(float)
    est = accuracy_estimate(correct)
    p = correct.mean()
    assert est.n_seeds == 1 and est.n_questions == 2000 and math.isinf(est.df)
    assert est.se_questions == pytest.approx(math.sqrt(p * (1 - p) / 2000), rel=0.1)
    assert est.lo < p < est.hi and est.half_width == pytest.approx(1.96 * est.se_questions, rel=1e-3)
    assert format_estimate(est).endswith("(1 seed)")


def test_combined_interval_uses_t_with_welch_satterthwaite_df():
    est = combine(0.5, 0.01, [0.48, 0.50, 0.52], 1000)
    vs = np.var([0.48, 0.50, 0.52], ddof=1) / 3
    var = 0.01**2 + vs
    assert est.df == pytest.approx(var**2 / (vs**2 / 2))
    assert est.se == pytest.approx(math.sqrt(var))
    from scipy import stats

    assert est.hi - 0.5 == pytest.approx(stats.t.ppf(0.975, est.df) * math.sqrt(var))
    # Seeds only (no per-question data): df = n - 1.
    only = accuracy_from_values([0.48, 0.50, 0.52])
    assert only.df == 2 and math.isnan(only.se_questions)
    assert only.hi - only.value == pytest.approx(stats.t.ppf(0.975, 2) * 0.02 / math.sqrt(3))


def test_interval_covers_the_true_accuracy_about_95_percent_of_the_time_on_a_simulated_benchmark():
    """Questions with their own difficulty, seeds with their own offset: the population accuracy is the mean
    of both; the combined 95% interval of 3 seeds x 300 questions should cover it about 95% of the time."""
    rng = np.random.default_rng(123)
    mu, hits, trials = 0.6, 0, 300
    for _ in range(trials):
        p_q = rng.beta(6, 4, size=300)  # mean 0.6
        offsets = rng.normal(0, 0.03, size=3)
        probs = np.clip(p_q[None, :] + offsets[:, None], 0, 1)
        correct = (rng.random((3, 300)) < probs).astype(float)
        est = accuracy_estimate(correct, n_boot=300, seed=int(rng.integers(1 << 30)))
        hits += est.lo <= mu <= est.hi
    coverage = hits / trials
    assert 0.90 <= coverage <= 0.995, coverage


def test_paired_comparison_one_seed_gives_mcnemar_and_bootstrap_interval():
    a = np.array([1] * 50 + [0] * 50, dtype=float)
    b = a.copy()
    b[50:70] = 1  # B also gets 20 of A's wrong ones right
    b[0:2] = 0  # and loses 2
    cmp = paired_comparison(a, b)
    assert cmp.estimate.value == pytest.approx(0.18)
    assert cmp.mcnemar == ((2, 20, mcnemar_exact(2, 20)),)
    assert cmp.estimate.p == mcnemar_exact(2, 20) and cmp.estimate.lo > 0
    assert "McNemar" in cmp.test and verdict(cmp.estimate) == "reproduced"


def test_seed_matched_comparison_widens_with_disagreeing_seeds():
    rng = np.random.default_rng(1)
    a = (rng.random((3, 400)) < 0.6).astype(float)
    steady = paired_comparison(a, a.copy())
    assert steady.estimate.value == 0 and steady.estimate.p == 1.0
    b = a.copy()
    b[0, :40] = 1 - b[0, :40]  # seed 0 differs, the others do not
    cmp = paired_comparison(a, b, seeds=["0", "1", "2"])
    assert cmp.seeds == ("0", "1", "2") and len(cmp.mcnemar) == 3
    assert cmp.mcnemar[1] == (0, 0, 1.0)
    assert cmp.test.startswith("seed-matched t, 3 seeds") and cmp.estimate.n_seeds == 3
    assert cmp.estimate.lo < cmp.estimate.value < cmp.estimate.hi
    with pytest.raises(ValueError, match="seed-matched"):
        paired_comparison(a, b[:2])


@pytest.mark.parametrize(("lo", "hi", "relation", "expected"), [
    (0.01, 0.05, ">", "reproduced"), (-0.04, -0.01, ">", "not reproduced"), (-0.005, 0.008, ">", "not reproduced"),
    (-0.02, 0.04, ">", "inconclusive"), (-0.008, 0.02, ">=", "reproduced"), (-0.05, -0.02, ">=", "not reproduced"),
    (-0.05, 0.01, ">=", "inconclusive"), (math.nan, math.nan, ">", "inconclusive"),
    (0.0016, 0.0042, ">", "reproduced, under 1 point"),
])
def test_verdicts_follow_the_interval_and_the_margin(lo, hi, relation, expected):
    est = Estimate((lo + hi) / 2 if not math.isnan(lo) else math.nan, lo, hi, 3, 100)
    assert verdict(est, relation, margin=0.01) == expected
