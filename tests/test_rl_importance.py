"""Truncated importance sampling (TRL's vllm_importance_sampling_correction / _cap) and the loss's token weights."""

from __future__ import annotations

import math

import pytest
import torch

from medgr2.rl.importance import importance_weight_stats, truncated_importance_weights
from medgr2.rl.loss import grpo_loss_with_stats


def test_weights_are_the_policy_sampler_ratio_capped_and_one_where_unknown_or_padding():
    old = torch.zeros(2, 4)
    sampler = torch.tensor([[-0.3, 0.3, -2.0, float("nan")], [-0.1, 0.0, 5.0, -1.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    w = truncated_importance_weights(old, sampler, mask, cap=2.0)
    expected = torch.tensor([[math.exp(0.3), math.exp(-0.3), 2.0, 1.0], [math.exp(0.1), 1.0, math.exp(-5.0), 1.0]])
    assert torch.allclose(w, expected, atol=1e-6)
    assert not w.requires_grad


def test_ratio_statistics_are_of_the_uncapped_ratio_over_scored_tokens():
    delta = 0.25  # the policy puts exp(0.25) more mass on every sampled token than the sampler did
    old = torch.full((3, 5), -1.0)
    stats = importance_weight_stats(old, old - delta, torch.ones(3, 5), cap=2.0)
    assert stats["is_ratio_mean"].item() == pytest.approx(math.exp(delta), rel=1e-6)
    assert stats["is_ratio_min"].item() == pytest.approx(math.exp(delta), rel=1e-6)
    assert stats["is_capped_frac"].item() == 0.0
    capped = importance_weight_stats(old, old - 1.0, torch.ones(3, 5), cap=2.0)
    assert capped["is_capped_frac"].item() == 1.0 and capped["is_ratio_max"].item() == pytest.approx(math.e)
    none = importance_weight_stats(old, torch.full((3, 5), float("nan")), torch.ones(3, 5), cap=2.0)
    assert math.isnan(none["is_ratio_mean"].item())


def test_token_weights_scale_the_surrogate_but_not_the_kl_term():
    torch.manual_seed(0)
    logps = torch.randn(4, 6, requires_grad=True)
    ref = logps.detach() + 0.1 * torch.randn(4, 6)
    adv, mask = torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, 6)
    w = torch.full((4, 6), 1.5)
    plain, _ = grpo_loss_with_stats(logps, None, ref, adv, mask, beta=0.0, loss_type="bnpo")
    weighted, _ = grpo_loss_with_stats(logps, None, ref, adv, mask, beta=0.0, loss_type="bnpo", token_weights=w)
    assert weighted.item() == pytest.approx(1.5 * plain.item(), rel=1e-6)
    kl_only = grpo_loss_with_stats(logps, None, ref, torch.zeros(4), mask, beta=0.3, loss_type="bnpo",
                                   token_weights=w)[0]
    kl_plain = grpo_loss_with_stats(logps, None, ref, torch.zeros(4), mask, beta=0.3, loss_type="bnpo")[0]
    assert kl_only.item() == pytest.approx(kl_plain.item(), rel=1e-6)
    with pytest.raises(ValueError, match="token_weights must have the shape"):
        grpo_loss_with_stats(logps, None, None, adv, mask, token_weights=torch.ones(4, 5))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        truncated_importance_weights(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 2.0)
    with pytest.raises(ValueError, match="cap must be >= 1"):
        truncated_importance_weights(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), 0.5)
