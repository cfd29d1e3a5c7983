"""The MedGR2 composite reward (paper Eq. 3) and its components."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import medgr2.rl.rewards as rewards_mod
from medgr2.rl.rewards import composite_reward, composite_reward_components, rescale_rm_scores


def test_doctests() -> None:
    assert doctest.testmod(rewards_mod).failed == 0


def test_paper_weights_hand_values() -> None:
    # 0.8 * R + 0.2 * match: 8 + 0.2, 4 + 0, -4.8 + 0.2 (lower-case prediction still matches)
    r = composite_reward(torch.tensor([10.0, 5.0, -6.0]), ["A", None, "c"], ["A", "B", "C"])
    torch.testing.assert_close(r, torch.tensor([8.2, 4.0, -4.6]))


def test_rescale_then_weight() -> None:
    # [-6, 10] -> [0, 1]: 10 -> 1, 2 -> 0.5, -6 -> 0, 14 -> 1 (clamped), -10 -> 0 (clamped)
    rm = torch.tensor([10.0, 2.0, -6.0, 14.0, -10.0])
    r = composite_reward(rm, ["A", "B", "C", "D", "A"], ["A", "A", "C", "A", "A"], rescale_rm=True)
    torch.testing.assert_close(r, torch.tensor([1.0, 0.4, 0.2, 0.8, 0.2]))
    torch.testing.assert_close(rescale_rm_scores(torch.tensor([0.0]), 0.0, 4.0), torch.tensor([0.0]))


def test_custom_weights_and_format_term() -> None:
    c = composite_reward_components(
        [1.0, 2.0],
        ["A", "B"],
        ["A", "A"],
        alpha=0.5,
        beta=1.0,
        format_scores=[1.0, 0.0],
        format_weight=0.25,
    )
    torch.testing.assert_close(c["rm"], torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(c["match"], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(c["format"], torch.tensor([1.0, 0.0]))
    # 0.5 + 1 + 0.25 = 1.75 ; 1 + 0 + 0 = 1
    torch.testing.assert_close(c["total"], torch.tensor([1.75, 1.0]))


def test_components_report_rescaled_rm_and_zero_format() -> None:
    c = composite_reward_components(torch.tensor([2.0]), ["B"], ["B"], rescale_rm=True)
    assert set(c) == {"rm", "match", "format", "total"}
    assert c["rm"].item() == pytest.approx(0.5)
    assert c["format"].item() == 0.0
    assert c["total"].item() == pytest.approx(0.8 * 0.5 + 0.2)


def test_none_never_matches() -> None:
    c = composite_reward_components([0.0, 0.0, 0.0], [None, None, ""], [None, "A", ""])
    assert c["match"].tolist() == [0.0, 0.0, 0.0]


def test_nan_passes_through() -> None:
    for rescale in (False, True):
        r = composite_reward(torch.tensor([math.nan, 1.0]), ["A", "A"], ["A", "A"], rescale_rm=rescale)
        assert math.isnan(r[0].item()) and not math.isnan(r[1].item())


def test_dtype_and_device_follow_rm_scores() -> None:
    r = composite_reward(torch.tensor([1.0], dtype=torch.float64), ["A"], ["A"])
    assert r.dtype == torch.float64
    assert composite_reward([1, 2], ["A", "B"], ["A", "A"]).dtype == torch.float32


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="format_scores"):
        composite_reward([1.0], ["A"], ["A"], format_weight=0.1)
    with pytest.raises(ValueError, match="length mismatch"):
        composite_reward([1.0, 2.0], ["A"], ["A", "B"])
    with pytest.raises(ValueError, match="rm_max"):
        composite_reward([1.0], ["A"], ["A"], rescale_rm=True, rm_min=1.0, rm_max=1.0)
    with pytest.raises(ValueError, match="format_scores must have shape"):
        composite_reward([1.0], ["A"], ["A"], format_scores=[1.0, 0.0], format_weight=1.0)
