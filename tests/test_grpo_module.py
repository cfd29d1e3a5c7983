"""GRPO policy: rollouts, log-probs, the Lightning loop, KL reference, NaN rewards, DDP through the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings

import lightning as L
import mlflow
import pytest
import torch
from conftest import ROOT, TEST_OVERRIDES
from torch.utils.data import DataLoader

from medgr2.data.synthmed import SynthMedConfig, make_item
from medgr2.modules.grpo import GRPOPolicy, HackingMonitor, RewardHackingWarning, completion_mask
from medgr2.pipeline import run

SMALL = {"max_new_tokens": 8, "num_generations": 4, "warmup_steps": 0}


def length_reward(records, completions) -> torch.Tensor:
    """A dense toy R_phi: shorter completions score higher (the policy can learn it within a few dozen steps)."""
    return torch.tensor([-len(c) / 64.0 for c in completions])


def make_policy(cache, **kw) -> GRPOPolicy:
    spec = {"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(cache)}
    args = {**SMALL, "alpha": 1.0, "beta_match": 0.0, "rescale_rm": False, **kw}
    module = GRPOPolicy(spec, **args)
    module.rm_fn = length_reward
    return module


def records(n: int) -> list[dict]:
    return [make_item(SynthMedConfig(), "train", i) for i in range(n)]


def fit(module: GRPOPolicy, steps: int, n_records: int = 8, batch_size: int = 2) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    loader = DataLoader(records(n_records), batch_size=batch_size, shuffle=True, collate_fn=list)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    return trainer


def params(module: GRPOPolicy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.model.named_parameters()}


def test_a_short_fit_changes_parameters_and_every_logged_value_is_finite(shared_cache):
    module = make_policy(shared_cache, lr=1e-2, total_steps=3)
    before = params(module)
    trainer = fit(module, steps=3)
    assert trainer.global_step == 3 and len(module.history) == 3
    changed = [n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2
    for row in module.history:
        bad = {k: v for k, v in row.items() if not math.isfinite(v)}
        assert not bad, bad
    expected = {"loss", "reward_mean", "reward_std", "reward_rm", "reward_match", "reward_format", "accuracy",
                "format_rate", "zero_var_frac", "completion_len", "truncated_frac", "clip_fraction", "entropy",
                "nan_batches", "reward_hacking", "time/generate", "time/reward", "time/logp_forward",
                "time/backward"}
    assert expected <= set(module.history[-1])
    assert all(math.isfinite(float(v)) for v in trainer.callback_metrics.values())
    assert f"train/{'reward_mean'}" in trainer.callback_metrics
    assert 0 < module.history[-1]["completion_len"] <= SMALL["max_new_tokens"]


def test_grpo_raises_the_mean_reward_on_a_toy_task(shared_cache):
    steps, k = 30, 6
    module = make_policy(shared_cache, lr=1e-2, total_steps=steps)
    fit(module, steps=steps)
    rewards = [row["reward_mean"] for row in module.history]
    first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
    assert last > first + 0.03, (first, last)


def test_completion_logps_match_a_naive_forward_with_repeated_images(shared_cache):
    """Shared image features + cached M-RoPE positions give the same log-probs as HF's own full forward."""
    module = make_policy(shared_cache)
    torch.manual_seed(0)
    ro, _ = module.make_rollouts(records(2))
    img = module._hf().config.image_token_id
    ro.completion_ids[ro.completion_ids == img] = 100  # HF's forward would read a sampled image-pad as a slot
    G, p = module.G, ro.prompt
    module.model.eval()
    with torch.no_grad():
        ours, _ = module.completion_logps(module.model, ro)
        ids = torch.cat([p["input_ids"].repeat_interleave(G, 0), ro.completion_ids], 1)
        attn = torch.cat([p["attention_mask"].repeat_interleave(G, 0), ro.completion_mask.long()], 1)
        mm = torch.cat([p["mm_token_type_ids"].repeat_interleave(G, 0),
                        torch.zeros_like(ro.completion_ids, dtype=p["mm_token_type_ids"].dtype)], 1)
        pv = p["pixel_values"].view(2, -1, p["pixel_values"].shape[-1]).repeat_interleave(G, 0)
        module._hf().model.rope_deltas = None
        logits = module.model(input_ids=ids, attention_mask=attn, pixel_values=pv.flatten(0, 1),
                              image_grid_thw=p["image_grid_thw"].repeat_interleave(G, 0), mm_token_type_ids=mm).logits
    Tc = ro.completion_ids.shape[1]
    naive = torch.log_softmax(logits[:, -Tc - 1 : -1].float(), -1).gather(-1, ro.completion_ids[..., None])[..., 0]
    m = ro.completion_mask.bool()
    torch.testing.assert_close(ours[m], naive[m], atol=1e-4, rtol=1e-4)


def test_the_repeat_rollout_mode_runs_too(shared_cache):
    module = make_policy(shared_cache, rollout="repeat", lr=1e-3, total_steps=1)
    fit(module, steps=1)
    assert math.isfinite(module.history[0]["loss"]) and module.history[0]["completion_len"] > 0


def test_num_iterations_reuses_rollouts_with_old_logprobs(shared_cache):
    module = make_policy(shared_cache, num_iterations=2, lr=3e-2, total_steps=4)
    fit(module, steps=4)
    gen_steps = [i for i, row in enumerate(module.history) if "reward_mean" in row]
    reuse = [row for row in module.history if row["rollout_reuse"] == 1.0]
    assert gen_steps == [0, 2] and len(reuse) == 2
    # The second pass sees a changed policy: the importance ratio leaves 1 (and may be clipped).
    assert all(abs(row["ratio_mean"] - 1.0) > 1e-6 for row in reuse)
    assert all(0.0 <= row["clip_fraction"] <= 1.0 for row in module.history)
    assert module.history[0]["ratio_mean"] == pytest.approx(1.0)


def test_beta_uses_a_frozen_reference_and_logs_a_finite_kl(shared_cache):
    module = make_policy(shared_cache, beta=0.2, lr=3e-2, total_steps=3)
    assert module.ref_model is not None and not any(p.requires_grad for p in module.ref_model.parameters())
    ref_before = {n: p.clone() for n, p in module.ref_model.named_parameters()}
    fit(module, steps=3)
    kls = [row["kl"] for row in module.history]
    assert all(math.isfinite(v) and v >= 0 for v in kls)
    assert kls[0] == pytest.approx(0.0, abs=1e-6) and kls[-1] > 0  # starts at the reference, then drifts
    assert all(torch.equal(p, ref_before[n]) for n, p in module.ref_model.named_parameters())


def test_lora_uses_the_base_with_adapters_disabled_as_reference(shared_cache):
    module = make_policy(shared_cache, beta=0.2, lr=3e-2, total_steps=3, lora=True)
    assert module.ref_model is None and module.is_peft
    fit(module, steps=3)
    kls = [row["kl"] for row in module.history]
    assert all(math.isfinite(v) for v in kls) and kls[-1] > 0


def test_nan_rewards_with_skip_flag_the_batch_and_leave_parameters_unchanged(shared_cache):
    module = make_policy(shared_cache, on_nan="skip", max_nan_batches=2, lr=1e-2, total_steps=2)
    module.rm_fn = lambda recs, texts: torch.full((len(texts),), float("nan"))
    before = params(module)
    with pytest.raises(FloatingPointError, match="consecutive"):
        fit(module, steps=2)
    assert module.nan_batches == 2 and [row["skipped"] for row in module.history] == [1.0, 1.0]
    assert all(torch.equal(p, before[n]) for n, p in module.model.named_parameters())

    # A single broken batch is skipped and training goes on.
    module = make_policy(shared_cache, on_nan="skip", lr=1e-2, total_steps=1)
    calls = []

    def flaky(recs, texts):
        calls.append(1)
        return torch.full((len(texts),), float("nan")) if len(calls) == 1 else length_reward(recs, texts)

    module.rm_fn = flaky
    trainer = fit(module, steps=1)
    assert trainer.global_step == 1 and [row["skipped"] for row in module.history] == [1.0, 0.0]
    assert module.history[-1]["nan_batches"] == 1.0


def test_nan_rewards_with_raise_stop_with_a_clear_error(shared_cache):
    module = make_policy(shared_cache, on_nan="raise")
    module.rm_fn = lambda recs, texts: torch.tensor([float("nan")] + [0.0] * (len(texts) - 1))
    with pytest.raises(FloatingPointError, match=r"NaN reward for 1 of 8 completions.*on_nan=skip"):
        fit(module, steps=1)


def test_zero_variance_groups_give_a_zero_loss_gradient(shared_cache):
    module = make_policy(shared_cache)
    module.rm_fn = lambda recs, texts: torch.ones(len(texts))  # every rollout of a prompt scores the same
    ro, stats = module.make_rollouts(records(2))
    assert float(stats["zero_var_frac"]) == 1.0 and torch.equal(ro.advantages, torch.zeros(8))
    loss, _ = module.policy_loss(ro)
    loss.backward()
    grads = [p.grad for p in module.model.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)
    assert loss.item() == 0.0


def test_the_real_reward_scorer_plugs_in_as_rm_fn(shared_cache):
    """R_phi's scorer (an untrained head here) scores GRPO's completions through :func:`reward_model_fn`."""
    from medgr2.modules.grpo import reward_model_fn
    from medgr2.modules.reward import RewardRegressor
    from medgr2.modules.reward_scorer import RewardScorer

    spec = {"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(shared_cache)}
    scorer = RewardScorer(RewardRegressor(model=spec, lora=False))
    module = make_policy(shared_cache, alpha=0.8, beta_match=0.2)
    module.rm_fn = reward_model_fn(scorer, batch_size=8)
    ro, stats = module.make_rollouts(records(2))
    assert ro is not None and ro.advantages.shape == (8,)
    assert math.isfinite(float(stats["reward_rm"])) and math.isfinite(float(stats["reward_mean"]))


def test_completion_mask_keeps_tokens_up_to_the_first_eos():
    eos = torch.tensor([9])
    mask, has_eos = completion_mask(torch.tensor([[1, 9, 2, 9], [1, 2, 3, 4]]), eos)
    assert mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    assert has_eos.tolist() == [True, False]


def test_the_hacking_monitor_warns_when_format_rises_while_accuracy_falls():
    mon = HackingMonitor(window=6, threshold=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flags = [mon.update(0.2, 0.5) for _ in range(6)]  # flat: nothing to report
    assert not any(flags)
    with pytest.warns(RewardHackingWarning, match="reward hacking"):
        flags = [mon.update(0.9, 0.2) for _ in range(3)]
    assert flags[-1]


def test_grpo_stage_logs_diagnostics_to_mlflow_and_exports_the_policy(make_cfg):
    cfg = make_cfg("stage=grpo", "model.pretrain.enabled=false", "stage.max_steps=2", "stage.train_size=16",
                   "stage.max_new_tokens=8", "evaluate.limit=8", "evaluate.max_new_tokens=8")
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["nan_batches"] == 0.0
    out = cfg.paths.output_dir
    assert os.path.exists(os.path.join(out, "policy", "model.safetensors"))
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    row = mlflow.search_runs(experiment_names=[cfg.logger.experiment]).iloc[0]
    client = mlflow.MlflowClient()
    for key in ("train/reward_mean", "train/accuracy", "train/entropy",
                "train/zero_var_frac", "train/clip_fraction", "train/loss"):
        hist = client.get_metric_history(row["run_id"], key)
        assert len(hist) == 2 and all(math.isfinite(m.value) for m in hist), key


def test_ddp_grpo_runs_with_two_cpu_processes_each_on_its_own_prompts(tmp_path, shared_cache):
    env = {**os.environ, "MEDGR2_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *TEST_OVERRIDES, f"paths.cache_dir={shared_cache}",
           "stage=grpo", "trainer=ddp", "logger=none", "model.pretrain.enabled=false", "stage.max_steps=2",
           "stage.train_size=16", "stage.batch_size=2", "stage.max_new_tokens=8", "stage.evaluate=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    audits = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("outputs/grpo/*/grpo_ranks/rank*.json"))]
    assert [a["rank"] for a in audits] == [0, 1] and all(a["world_size"] == 2 for a in audits)
    ids0, ids1 = set(audits[0]["prompt_ids"]), set(audits[1]["prompt_ids"])
    assert len(ids0) == len(ids1) == 4 and not ids0 & ids1  # DistributedSampler: each rank its own prompts
    # DDP averaged the gradients: both ranks end with the same weights.
    assert audits[0]["param_checksum"] == pytest.approx(audits[1]["param_checksum"], rel=1e-9, abs=1e-9)
    assert len(list(tmp_path.glob("outputs/grpo/*/policy/model.safetensors"))) == 1  # rank 0 exports alone


def test_ddp_difficulty_filter_without_an_informative_group_takes_no_step_and_stops_after_an_epoch(tmp_path,
                                                                                                   shared_cache):
    # Random weights never answer right: every group of both ranks is all wrong, so both skip every batch (the
    # decision is a collective: a rank stepping alone would hang DDP's all-reduce) and stop together after one
    # epoch. Ranks that disagree (one silenced with zero advantages) need a policy that is sometimes right.
    env = {**os.environ, "MEDGR2_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *TEST_OVERRIDES, f"paths.cache_dir={shared_cache}",
           "stage=grpo", "trainer=ddp", "logger=none", "model.pretrain.enabled=false", "stage.max_steps=50",
           "stage.train_size=16", "stage.batch_size=2", "stage.max_new_tokens=8", "stage.evaluate=false",
           "stage.difficulty_filter=true"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "no informative prompt in 4 consecutive batches" in out  # 16 prompts / 2 ranks / 2 per batch
    audits = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("outputs/grpo/*/grpo_ranks/rank*.json"))]
    assert [a["rank"] for a in audits] == [0, 1] and [a["steps"] for a in audits] == [0, 0]  # no optimizer step
    assert audits[0]["param_checksum"] == pytest.approx(audits[1]["param_checksum"], rel=1e-9, abs=1e-9)
