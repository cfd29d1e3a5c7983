"""GRPO options of issue 21 in the real module: difficulty filtering (train only on informative groups, skip a
batch with none, log the informative share), R_φ normalised before mixing, and R_φ's ranking accuracy on the
policy's own right vs wrong rollouts (train/rm_pair_acc)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from test_grpo_module import make_policy, params, records
from torch.utils.data import DataLoader

from medgr2.configs.grpo import GRPOConfig, RewardConfig
from medgr2.modules.grpo_rewards import score_completions


def fixed_match(module, pattern: list[float]):
    """Replace the module's answer check by a fixed per-rollout 0/1 pattern (rollouts, R_φ, loss stay real)."""
    real = module.score

    def score(recs, texts):
        comps = real(recs, texts)
        match = torch.tensor(pattern[: len(texts)], device=comps["total"].device)
        comps["total"] = comps["total"] - module.cfg.reward.beta_match * comps["match"] + module.cfg.reward.beta_match * match
        comps["match"] = match
        return comps

    module.score = score


def test_difficulty_filter_keeps_only_the_groups_whose_rollouts_disagree(shared_cache):
    module = make_policy(shared_cache, num_generations=2, beta_match=1.0, difficulty_filter=True)
    fixed_match(module, [1.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # mixed, all right, all wrong
    ro, stats = module.make_rollouts(records(3))
    assert float(stats["informative_frac"]) == pytest.approx(1 / 3) and stats["kept_groups"] == 1.0
    assert ro.completion_ids.shape[0] == 2 and ro.advantages.shape == (2,)
    assert ro.prompt["input_ids"].shape[0] == 1 and ro.prompt_pos.shape[1] == 1
    loss, _ = module.policy_loss(ro)  # the sub-selected prompt and rollouts still line up in one forward
    assert torch.isfinite(loss)


def test_difficulty_filter_off_keeps_every_group_and_still_logs_the_informative_share(shared_cache):
    module = make_policy(shared_cache, num_generations=2, beta_match=1.0)
    fixed_match(module, [1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    ro, stats = module.make_rollouts(records(3))
    assert ro.completion_ids.shape[0] == 6 and float(stats["informative_frac"]) == pytest.approx(1 / 3)
    assert "kept_groups" not in stats


def test_a_batch_without_an_informative_group_is_skipped_without_a_step(shared_cache):
    module = make_policy(shared_cache, num_generations=2, lr=1e-2, difficulty_filter=True)
    fixed_match(module, [1.0] * 8)  # every rollout right: nothing to learn about the answer
    before = params(module)
    # one epoch of two batches: skipped batches are not optimizer steps, so max_steps alone would never end
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(records(4), batch_size=2, collate_fn=list))
    assert trainer.global_step == 0 and module.difficulty_skipped == 2
    assert all(row["skipped"] == 1.0 and row["informative_frac"] == 0.0 for row in module.history)
    assert all(torch.equal(p, before[n]) for n, p in module.model.named_parameters())


def test_training_ends_after_a_whole_epoch_without_an_informative_group(shared_cache):
    module = make_policy(shared_cache, num_generations=2, difficulty_filter=True)
    fixed_match(module, [0.0] * 8)  # every rollout wrong
    # max_steps alone (max_epochs=-1, as the pipeline's trainers) would never end: no batch is a step
    trainer = L.Trainer(accelerator="cpu", max_steps=5, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(records(4), batch_size=2, collate_fn=list))
    assert trainer.global_step == 0 and module.difficulty_skipped == 2


def test_rm_pair_accuracy_is_logged_for_right_vs_wrong_rollouts_of_one_prompt(shared_cache):
    module = make_policy(shared_cache, num_generations=2, beta_match=1.0)
    module.rm_fn = lambda recs, texts: torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, 5.0])
    fixed_match(module, [1.0, 0.0, 1.0, 0.0, 1.0, 1.0])  # prompt 0 ranked right, prompt 1 wrong, 2 has no pair
    _, stats = module.make_rollouts(records(3))
    assert stats["rm_pair_acc"] == pytest.approx(0.5)
    assert float(stats["reward_rm_raw"]) == pytest.approx(2.0)


def test_score_completions_z_scores_r_phi_within_each_group_before_mixing():
    cfg = RewardConfig(alpha=0.8, beta_match=0.2, rm_normalize="group")
    recs = [{"answer": "A", "question_type": "x"}] * 4
    texts = ["<answer>A</answer>", "<answer>B</answer>", "<answer>A</answer>", "<answer>A</answer>"]
    comps = score_completions(lambda r, t: torch.tensor([4.0, 2.0, 7.0, 7.0]), recs, texts, cfg, group_size=2)
    assert comps["rm"].tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0])
    assert comps["rm_raw"].tolist() == pytest.approx([4.0, 2.0, 7.0, 7.0])
    assert comps["total"].tolist() == pytest.approx([0.8 + 0.2, -0.8, 0.2, 0.2])
    plain = score_completions(lambda r, t: torch.tensor([4.0, 2.0, 7.0, 7.0]), recs, texts,
                              RewardConfig(), group_size=2)
    assert plain["rm"].tolist() == pytest.approx([10 / 16, 8 / 16, 13 / 16, 13 / 16])  # rescaled, not z-scored


def test_the_new_grpo_options_default_off_and_are_validated():
    cfg = GRPOConfig()
    assert cfg.difficulty_filter is False and cfg.reward.rm_normalize == "none"
    assert GRPOConfig.from_flat({"difficulty_filter": True, "rm_normalize": "qtype"}).reward.rm_normalize == "qtype"
    with pytest.raises(ValueError, match="rm_normalize must be one of"):
        GRPOConfig.from_flat({"rm_normalize": "batch"})
