"""RL generalization recipes (issue 21): cross_modality_grpo / cross_task_grpo (+ match-reward arms) compose as
source-only SFT then GRPO on source-only prompts, and a tiny run logs the SFT-only and SFT+GRPO accuracy per
target group in one top-level MLflow run (the paired "SFT+GRPO minus SFT" cells)."""

from __future__ import annotations

import json

import datasets
import pytest

from medgr2.pipeline import run
from medgr2.pipeline.loop import loop_dir

ARMS = {"cross_modality_grpo": (0.8, 0.2), "cross_modality_grpo_match": (0.0, 1.0),
        "cross_task_grpo": (0.8, 0.2), "cross_task_grpo_match": (0.0, 1.0)}


@pytest.mark.parametrize("recipe", sorted(ARMS))
def test_grpo_transfer_recipes_are_the_sft_recipe_plus_grpo_on_source_prompts(make_cfg, recipe):
    cfg = make_cfg(f"experiment={recipe}", test_size=False)
    sft_only = make_cfg(f"experiment={recipe.split('_grpo')[0]}", test_size=False)
    assert cfg.experiment_name == recipe
    assert cfg.stage.grpo_enabled and cfg.stage.eval_after_sft and cfg.stage.grpo_prompts == "d_gen"
    assert (cfg.stage.grpo.alpha, cfg.stage.grpo.beta_match) == ARMS[recipe]
    # Source-only: no ground-truth seed rows in D_gen, the same source filter and SFT as the SFT-only recipe.
    assert cfg.stage.seed_size == 0
    for key in ("source", "source_axis", "k"):
        assert cfg[key] == sft_only[key]
    assert cfg.stage.sft == sft_only.stage.sft and cfg.stage.generate == sft_only.stage.generate
    assert cfg.select == sft_only.select
    # Both arms share the GRPO budget: only the reward weights differ.
    other = recipe[:-len("_match")] if recipe.endswith("_match") else recipe + "_match"
    a, b = dict(cfg.stage.grpo), dict(make_cfg(f"experiment={other}", test_size=False).stage.grpo)
    assert {k for k in a if a[k] != b[k]} == {"alpha", "beta_match"}


@pytest.mark.slow
def test_cross_modality_grpo_logs_sft_and_grpo_accuracy_per_modality_in_one_run(make_cfg):
    import mlflow

    cfg = make_cfg("experiment=cross_modality_grpo", "source=CT", "stage.generate.n_sources=16", "k=8",
                   "stage.sft.max_steps=2", "stage.sft.batch_size=4", "stage.sft.val_size=4",
                   "stage.grpo.max_steps=2", "stage.grpo.batch_size=2", "stage.grpo.num_generations=2",
                   "stage.grpo.max_new_tokens=12", "stage.reward.max_steps=2", "stage.reward.source.size=16",
                   "stage.reward.max_val_sources=4", "evaluate.limit=16")
    metrics = run(cfg)
    state = json.loads((loop_dir(cfg) / "loop_state.json").read_text())["steps"]
    assert {"iter0/sft", "iter0/grpo"} <= set(state)
    # GRPO's prompts are D_gen, which holds only candidates of CT images (no seed rows).
    d_gen = datasets.load_from_disk(state["iter0/union"]["outputs"]["train_data"])
    assert set(d_gen["modality"]) == {"CT"}
    audit = json.loads((loop_dir(cfg) / "iter0" / "grpo" / "grpo_ranks" / "rank0.json").read_text())
    assert set(audit["prompt_ids"]) <= set(d_gen["id"])
    # Per target modality, the SFT-only and the SFT+GRPO accuracy of the same run, on every modality tested.
    sft = {k[len("sft/test/acc/modality/"):] for k in metrics if k.startswith("sft/test/acc/modality/")}
    final = {k[len("test/acc/modality/"):] for k in metrics if k.startswith("test/acc/modality/")}
    assert sft and sft == final and len(final) > 1
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["medgr2"])
    top = runs[(runs["tags.stage"] == "loop") & runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    assert (top["tags.experiment"], top["tags.source"], top["tags.grpo"]) == ("cross_modality_grpo", "CT", "true")
    for m in final:
        assert top[f"metrics.sft/test/acc/modality/{m}"] == pytest.approx(metrics[f"sft/test/acc/modality/{m}"])
        assert top[f"metrics.test/acc/modality/{m}"] == pytest.approx(metrics[f"test/acc/modality/{m}"])
