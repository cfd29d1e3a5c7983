"""GRPO loss: hand-computed values for every aggregation, clipping, KL, gradients, validation."""

from __future__ import annotations

import math

import pytest
import torch

from medgr2.rl.loss import grpo_loss, grpo_loss_with_stats

F64 = torch.float64


def _t(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


# ---- on-policy: ratio == 1, token loss == -A ------------------------------------------------------------
# A = [1, -0.5], mask rows have 2 and 1 active tokens -> token losses row0: -1, -1; row1: 0.5
ON_LOGPS = [[-1.0, -2.0, -0.5], [-0.3, -1.2, -0.7]]
ON_ADV = [1.0, -0.5]
ON_MASK = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
ON_EXPECTED = {
    "grpo": (-2 / 2 + 0.5 / 1) / 2,  # -0.25: mean over sequences of per-sequence token means
    "bnpo": (-2 + 0.5) / 3,  # -0.5: all active tokens pooled
    "dr_grpo": (-2 + 0.5) / (2 * 4),  # -0.1875 with max_completion_length=4
    "dapo": (-2 + 0.5) / 3,  # == bnpo on one process
}


@pytest.mark.parametrize("loss_type", list(ON_EXPECTED))
def test_on_policy_values(loss_type: str) -> None:
    loss = grpo_loss(
        _t(ON_LOGPS), None, None, _t(ON_ADV), _t(ON_MASK), loss_type=loss_type, max_completion_length=4
    )
    assert loss.item() == pytest.approx(ON_EXPECTED[loss_type])


@pytest.mark.parametrize("loss_type", list(ON_EXPECTED))
def test_on_policy_gradient_is_policy_gradient(loss_type: str) -> None:
    # d loss / d logp[b, t] = -A_b * mask[b, t] / normaliser  (the REINFORCE gradient, via the detach trick)
    logps = _t(ON_LOGPS).requires_grad_()
    loss = grpo_loss(logps, None, None, _t(ON_ADV), _t(ON_MASK), loss_type=loss_type, max_completion_length=4)
    loss.backward()
    a, m = _t(ON_ADV).unsqueeze(1), _t(ON_MASK)
    norm = {
        "grpo": 2 * m.sum(dim=1, keepdim=True),  # B * tokens of that sequence
        "bnpo": m.sum(),
        "dr_grpo": torch.tensor(2 * 4.0, dtype=F64),
        "dapo": m.sum(),
    }[loss_type]
    torch.testing.assert_close(logps.grad, -a * m / norm)


# ---- off-policy with clipping, eps = 0.2 ----------------------------------------------------------------
# ratios and A = [1, -0.5]; mask drops the last token of row 1
#   row0 (A=1):    r=1.5 -> -min(1.5, 1.2)  = -1.2  (high clipped)
#                  r=0.5 -> -min(0.5, 0.8)  = -0.5  (A>0, low ratio: unclipped branch)
#                  r=1.1 -> -1.1
#   row1 (A=-0.5): r=0.5 -> -min(-0.25, -0.4) = 0.4  (low clipped)
#                  r=1.5 -> -min(-0.75, -0.6) = 0.75 (A<0, high ratio: unclipped branch)
RATIOS = [[1.5, 0.5, 1.1], [0.5, 1.5, 1.0]]
OFF_ADV = [1.0, -0.5]
OFF_MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
OLD = [[-1.0, -2.0, -0.7], [-0.4, -1.3, -3.0]]
OFF_EXPECTED = {
    "grpo": (-2.8 / 3 + 1.15 / 2) / 2,  # -0.1791666...
    "bnpo": (-2.8 + 1.15) / 5,  # -0.33
    "dr_grpo": (-2.8 + 1.15) / (2 * 4),  # -0.20625
    "dapo": (-2.8 + 1.15) / 5,
}


def _off_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    old = _t(OLD)
    return old + torch.log(_t(RATIOS)), old


@pytest.mark.parametrize("loss_type", list(OFF_EXPECTED))
def test_clipped_values_and_stats(loss_type: str) -> None:
    logps, old = _off_inputs()
    loss, stats = grpo_loss_with_stats(
        logps, old, None, _t(OFF_ADV), _t(OFF_MASK), loss_type=loss_type, max_completion_length=4
    )
    assert loss.item() == pytest.approx(OFF_EXPECTED[loss_type])
    assert stats["clip_fraction"].item() == pytest.approx(2 / 5)  # (0,0) high, (1,0) low of 5 active
    assert stats["low_clip_fraction"].item() == pytest.approx(1 / 5)
    assert stats["high_clip_fraction"].item() == pytest.approx(1 / 5)
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 1.1 + 0.5 + 1.5) / 5)
    assert "kl" not in stats
    assert all(not v.requires_grad for v in stats.values())


def test_clipped_tokens_get_no_gradient() -> None:
    logps, old = _off_inputs()
    logps.requires_grad_()
    grpo_loss(logps, old, None, _t(OFF_ADV), _t(OFF_MASK), loss_type="bnpo").backward()
    g = logps.grad
    assert g[0, 0].item() == 0.0 and g[1, 0].item() == 0.0  # clipped region
    assert g[1, 2].item() == 0.0  # masked
    # unclipped: d(-r*A)/dlogp = -r*A / N
    assert g[0, 1].item() == pytest.approx(-0.5 * 1.0 / 5)
    assert g[1, 1].item() == pytest.approx(-1.5 * -0.5 / 5)


def test_epsilon_high_widens_upper_clip() -> None:
    logps, old = _off_inputs()
    loss, stats = grpo_loss_with_stats(
        logps, old, None, _t(OFF_ADV), _t(OFF_MASK), epsilon_high=0.6, loss_type="bnpo"
    )
    # r=1.5 < 1.6 is no longer clipped: token (0,0) contributes -1.5 instead of -1.2
    assert loss.item() == pytest.approx((-3.1 + 1.15) / 5)
    assert stats["clip_fraction"].item() == pytest.approx(1 / 5)
    assert stats["high_clip_fraction"].item() == 0.0


def test_dapo_num_items_override() -> None:
    logps, old = _off_inputs()
    loss = grpo_loss(logps, old, None, _t(OFF_ADV), _t(OFF_MASK), loss_type="dapo", num_items_in_batch=10)
    assert loss.item() == pytest.approx(-1.65 / 10)


def test_kl_term_value() -> None:
    # A = 0 isolates the KL; ref - logp = [0, ln 2, -ln 2]
    # k3 = e^d - d - 1 -> 0, 2 - ln2 - 1, 0.5 + ln2 - 1 ; the ln 2 terms cancel: sum = 0.5
    logps = _t([[-1.0, -2.0, -0.5]])
    ref = logps + _t([[0.0, math.log(2), -math.log(2)]])
    loss, stats = grpo_loss_with_stats(
        logps, None, ref, _t([0.0]), torch.ones(1, 3), beta=0.1, loss_type="bnpo"
    )
    assert loss.item() == pytest.approx(0.1 * 0.5 / 3)
    assert stats["kl"].item() == pytest.approx(0.5 / 3)


def test_kl_adds_to_policy_term() -> None:
    logps = _t(ON_LOGPS)
    ref = logps + _t([[math.log(2), 0.0, 5.0], [0.0, 0.0, 0.0]])  # masked token (0,2) must not count
    loss = grpo_loss(logps, None, ref, _t(ON_ADV), _t(ON_MASK), beta=0.5, loss_type="grpo")
    kl = 2 - math.log(2) - 1
    # row0: (-1 - 1 + 0.5*kl) / 2, row1: 0.5 / 1
    assert loss.item() == pytest.approx(((-2 + 0.5 * kl) / 2 + 0.5) / 2)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_gradcheck(loss_type: str) -> None:
    # log-ratios kept away from the clip kinks ln(0.8) = -0.223 and ln(1.2) = 0.182 (and from 0 ties)
    log_ratio = _t([[0.05, -0.5, 0.4, -0.1], [0.3, -0.05, 0.1, -0.4]])
    old = _t([[-1.0, -0.2, -2.0, -0.9], [-1.5, -0.6, -0.3, -2.2]])
    ref = old + _t([[0.2, -0.3, 0.1, 0.5], [-0.2, 0.4, 0.0, 0.3]])
    logps = (old + log_ratio).requires_grad_()
    adv, mask = _t([0.7, -1.3]), _t([[1, 1, 1, 0], [1, 1, 0, 0]])

    def f(lp: torch.Tensor) -> torch.Tensor:
        return grpo_loss(lp, old, ref, adv, mask, beta=0.04, loss_type=loss_type, max_completion_length=6)

    assert torch.autograd.gradcheck(f, (logps,))


def test_bool_mask_and_empty_rows() -> None:
    logps = _t(ON_LOGPS)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    # grpo: the empty row contributes 0 (token count clamped to 1), not NaN
    loss = grpo_loss(logps, None, None, _t(ON_ADV), mask)
    assert loss.item() == pytest.approx((-1.0 + 0.0) / 2)
    # all-padding batch: 0, not NaN
    empty = torch.zeros(2, 3, dtype=torch.bool)
    for lt in ("grpo", "bnpo", "dapo"):
        loss, stats = grpo_loss_with_stats(logps, None, None, _t(ON_ADV), empty, loss_type=lt)
        assert loss.item() == 0.0 and stats["clip_fraction"].item() == 0.0


def test_validation_errors() -> None:
    lp, adv, m = _t(ON_LOGPS), _t(ON_ADV), _t(ON_MASK)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(lp, None, None, adv, m, beta=0.1)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(lp, None, None, adv, m, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(lp, None, None, adv, m, loss_type="ppo")
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(lp, None, None, adv, m[:, :2])
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(lp, None, None, adv[:1], m)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(lp, None, lp, adv, m, beta=-1.0)
