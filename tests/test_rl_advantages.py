"""Group-relative advantages: hand-computed values, TRL semantics, degenerate groups, validation."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import medgr2.rl.advantages as adv_mod
from medgr2.rl.advantages import group_advantages, zero_variance_fraction

EPS = 1e-4


def test_doctests() -> None:
    assert doctest.testmod(adv_mod).failed == 0


def test_scale_none_is_centred_rewards() -> None:
    # groups [1, 0] (mean 0.5) and [2, 2] (mean 2)
    a = group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), 2, scale="none")
    torch.testing.assert_close(a, torch.tensor([0.5, -0.5, 0.0, 0.0]))


def test_scale_group_hand_values() -> None:
    # group [1, 0]: mean 0.5, Bessel std sqrt((0.25 + 0.25) / 1) = sqrt(0.5)
    # group [0, 1, 2] would be size 3; use two groups of 3: [0, 1, 2] (std 1) and [4, 4, 7] (mean 5, std sqrt(3))
    r = torch.tensor([0.0, 1.0, 2.0, 4.0, 4.0, 7.0], dtype=torch.float64)
    a = group_advantages(r, 3, scale="group")
    s2 = math.sqrt((1 + 1 + 4) / 2)  # deviations -1, -1, 2 -> sum sq 6, / (n-1)=2 -> 3
    expected = torch.tensor(
        [-1 / (1 + EPS), 0.0, 1 / (1 + EPS), -1 / (s2 + EPS), -1 / (s2 + EPS), 2 / (s2 + EPS)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(a, expected)

    a2 = group_advantages(torch.tensor([1.0, 0.0]), 2, scale="group")
    torch.testing.assert_close(a2, torch.tensor([0.5, -0.5]) / (math.sqrt(0.5) + EPS))


def test_scale_batch_uses_group_mean_and_batch_std() -> None:
    # rewards [1, 0, 2, 2]: group means [.5, .5, 2, 2]; batch mean 1.25, deviations -.25, -1.25, .75, .75
    # sum sq = .0625 + 1.5625 + .5625 + .5625 = 2.75, Bessel var = 2.75 / 3
    r = torch.tensor([1.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    a = group_advantages(r, 2, scale="batch")
    std = math.sqrt(2.75 / 3)
    torch.testing.assert_close(a, torch.tensor([0.5, -0.5, 0.0, 0.0], dtype=torch.float64) / (std + EPS))


def _reference_loop(r: list[float], g: int, scale: str) -> list[float]:
    """Independent plain-Python reimplementation of TRL's formula, for random cross-checks."""
    out = []
    all_mean = sum(r) / len(r)
    batch_std = math.sqrt(sum((x - all_mean) ** 2 for x in r) / (len(r) - 1))
    for i in range(0, len(r), g):
        grp = r[i : i + g]
        m = sum(grp) / g
        std = math.sqrt(sum((x - m) ** 2 for x in grp) / (g - 1))
        for x in grp:
            d = x - m
            if scale == "group":
                d /= std + EPS
            elif scale == "batch":
                d /= batch_std + EPS
            out.append(d)
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_matches_reference_loop(scale: str) -> None:
    gen = torch.Generator().manual_seed(0)
    r = torch.rand(24, generator=gen, dtype=torch.float64)
    a = group_advantages(r, 4, scale=scale)
    torch.testing.assert_close(a, torch.tensor(_reference_loop(r.tolist(), 4, scale), dtype=torch.float64))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_variance_group_is_exactly_zero(scale: str) -> None:
    # in float32 mean([0.9, 0.9, 0.9]) != 0.9 (off by an ulp, r - mean = 6e-8): must still give exact 0
    r = torch.tensor([0.9, 0.9, 0.9, 0.0, 1.0, 0.5])
    assert (r[:3] - r[:3].mean() != 0).any()  # the trap is real
    a = group_advantages(r, 3, scale=scale)
    assert torch.equal(a[:3], torch.zeros(3))
    assert not torch.isnan(a).any()
    assert (a[3:] != 0).any()


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_size_one_gives_zeros_not_nan(scale: str) -> None:
    for r in (torch.tensor([0.3, 1.0, -2.0]), torch.tensor([5.0])):
        a = group_advantages(r, 1, scale=scale)
        assert torch.equal(a, torch.zeros_like(r))


def test_single_group_batch_std() -> None:
    # one group of 2 with scale="batch": batch std == group std
    r = torch.tensor([1.0, 3.0])
    torch.testing.assert_close(group_advantages(r, 2, "batch"), group_advantages(r, 2, "group"))


def test_integer_rewards_are_promoted_and_dtype_kept() -> None:
    assert group_advantages(torch.tensor([1, 0]), 2).dtype == torch.float32
    assert group_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), 2).dtype == torch.float64


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="std")
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), 0)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="empty"):
        group_advantages(torch.zeros(0), 2)


def test_nan_rewards_name_indices() -> None:
    r = torch.tensor([1.0, 0.0, float("nan"), 1.0, 0.0, float("nan")])
    with pytest.raises(ValueError, match=r"\[2, 5\]"):
        group_advantages(r, 3)
    with pytest.raises(ValueError, match=r"\[2, 5\]"):
        zero_variance_fraction(r, 3)


def test_zero_variance_fraction() -> None:
    # groups [1, 1], [0, 1], [3, 3] -> 2 of 3 constant
    assert zero_variance_fraction(torch.tensor([1.0, 1.0, 0.0, 1.0, 3.0, 3.0]), 2) == pytest.approx(2 / 3)
    assert zero_variance_fraction(torch.tensor([0.0, 1.0]), 2) == 0.0
    assert zero_variance_fraction(torch.tensor([0.0, 1.0]), 1) == 1.0
