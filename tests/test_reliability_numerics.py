"""Reliability: GRPO numerics on degenerate batches — all-equal rewards, empty completions, completions cut at
max_new_tokens, an infinite reward from a broken reward model. Always a finite loss (or a flagged, skipped
batch), never NaN parameters. (NaN rewards and one zero-variance group: test_grpo_module.py / test_rl_*.py.)
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from medgr2.data.response_format import extract_answer, format_reward
from medgr2.data.synthmed import SynthMedConfig, make_item
from medgr2.modules.grpo import GRPOPolicy, completion_mask
from medgr2.rl import (
    LOSS_TYPES,
    SCALE_CHOICES,
    composite_reward,
    group_advantages,
    grpo_loss_with_stats,
)

G, T = 4, 6


def _loss(adv: torch.Tensor, mask: torch.Tensor, loss_type: str, beta: float = 0.0):
    torch.manual_seed(0)
    logps = (-torch.rand(adv.numel(), T) - 0.1).requires_grad_()
    old = logps.detach() + 0.05 * torch.randn_like(logps)
    ref = logps.detach() + 0.1 * torch.randn_like(logps) if beta else None
    loss, stats = grpo_loss_with_stats(logps, old, ref, adv, mask, beta=beta, loss_type=loss_type,
                                       max_completion_length=T)
    loss.backward()
    return loss, stats, logps.grad


@pytest.mark.parametrize("scale", SCALE_CHOICES)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_all_equal_rewards_give_zero_advantages_and_a_finite_zero_loss(scale, loss_type):
    for value in (0.0, 1.0, 0.9, -6.0, 1e6):
        adv = group_advantages(torch.full((3 * G,), value), G, scale=scale)
        assert torch.equal(adv, torch.zeros(3 * G))
        loss, stats, grad = _loss(adv, torch.ones(3 * G, T), loss_type)
        assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0
        assert all(math.isfinite(float(v)) for v in stats.values())
    # With a KL term the loss is the (finite) KL alone.
    loss, _, grad = _loss(torch.zeros(3 * G), torch.ones(3 * G, T), loss_type, beta=0.04)
    assert math.isfinite(loss.item()) and torch.isfinite(grad).all()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_empty_completions_give_a_finite_loss(loss_type):
    # An EOS as the first token: the completion text is empty, only the EOS is in the mask.
    eos = torch.tensor([9])
    tokens = torch.tensor([[9, 0, 0, 0, 0, 0]] * (2 * G))
    mask, has_eos = completion_mask(tokens, eos)
    assert mask.sum(1).tolist() == [1] * (2 * G) and has_eos.all()
    texts = [""] * (2 * G)
    assert [extract_answer(t) for t in texts] == [None] * (2 * G) and format_reward("") == 0.0
    rewards = composite_reward(torch.zeros(2 * G), [None] * (2 * G), ["A"] * (2 * G), rescale_rm=True)
    adv = group_advantages(rewards, G)
    loss, _, grad = _loss(adv, mask.float(), loss_type)
    assert math.isfinite(loss.item()) and torch.isfinite(grad).all()
    # No token at all (an all-padding batch) is finite too, for every loss type.
    loss, stats, grad = _loss(torch.randn(2 * G), torch.zeros(2 * G, T), loss_type)
    assert loss.item() == 0.0 and torch.isfinite(grad).all() and stats["clip_fraction"].item() == 0.0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_completions_cut_at_max_new_tokens_give_a_finite_loss(loss_type):
    tokens = torch.tensor([[5, 6, 7, 8, 5, 6]] * G)  # never an EOS: cut at the limit
    mask, has_eos = completion_mask(tokens, torch.tensor([9]))
    assert mask.all() and not has_eos.any()
    texts = ["<think>the lesion is", "<answer>", "<think>x</think><answer>B", "<answer>C</ans"]
    preds = [extract_answer(t) for t in texts]
    assert preds[:2] == [None, None]
    rewards = composite_reward(torch.tensor([1.0, 2.0, 3.0, 4.0]), preds, ["B"] * G,
                               format_scores=[format_reward(t) for t in texts], format_weight=0.1)
    assert torch.isfinite(rewards).all()
    loss, _, grad = _loss(group_advantages(rewards, G), mask.float(), loss_type)
    assert math.isfinite(loss.item()) and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_an_infinite_reward_model_score_is_treated_like_nan(bad):
    r = composite_reward(torch.tensor([bad, 1.0]), ["A", "A"], ["A", "B"], rescale_rm=True)
    assert math.isnan(r[0].item()) and math.isfinite(r[1].item())
    with pytest.raises(ValueError, match=r"NaN or inf at indices \[1\]"):
        group_advantages(torch.tensor([0.0, bad, 1.0, 1.0]), 2)


# ---------------------------------------------------------------------------- the module, a real fit


def _policy(cache, **kw) -> GRPOPolicy:
    spec = {"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(cache)}
    args = {"max_new_tokens": 3, "num_generations": G, "warmup_steps": 0, "alpha": 1.0, "beta_match": 0.2,
            "rescale_rm": False, "lr": 1e-2, **kw}
    return GRPOPolicy(spec, **args)


def _fit(module: GRPOPolicy, steps: int) -> None:
    L.seed_everything(0, verbose=False)
    records = [make_item(SynthMedConfig(), "train", i) for i in range(4)]
    loader = DataLoader(records, batch_size=2, shuffle=False, collate_fn=list)
    L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, loader)


def _finite_params(module: GRPOPolicy) -> bool:
    return all(torch.isfinite(p).all() for p in module.model.parameters())


def test_a_fit_where_every_completion_is_cut_at_the_limit_stays_finite(shared_cache):
    module = _policy(shared_cache, max_new_tokens=2)  # far too short for <think>...<answer>X</answer>
    module.rm_fn = lambda recs, texts: torch.tensor([float(len(t)) for t in texts])
    _fit(module, steps=2)
    assert len(module.history) == 2 and _finite_params(module)
    for row in module.history:
        assert row["truncated_frac"] == 1.0 and row["accuracy"] == 0.0
        assert all(math.isfinite(v) for v in row.values()), row


def test_an_infinite_reward_flags_and_skips_the_batch_and_leaves_the_weights_finite(shared_cache):
    module = _policy(shared_cache)
    calls = [0]

    def rm(recs, texts):
        calls[0] += 1
        scores = torch.zeros(len(texts))
        if calls[0] == 1:
            scores[3] = math.inf  # the first batch: a reward model that overflowed
        return scores

    module.rm_fn = rm
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    _fit(module, steps=1)
    assert module.nan_batches == 1 and _finite_params(module)
    assert all(torch.equal(p, before[n]) for n, p in module.model.named_parameters())  # no update from it
