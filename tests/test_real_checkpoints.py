"""The stages on real-layout Qwen2.5-VL checkpoints (real config, tokenizer, chat template, preprocessor and
generation config; random narrow weights under the real key names — see tests/real_layout.py).

Skipped, saying why, where the real checkpoint files are absent. Kept small: one build of each layout per
session, 56x56 images (4 image tokens), one or two steps per stage.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import real_layout
import torch
from conftest import ROOT, compose_cfg
from safetensors.torch import load_file

from medgr2.data.synthmed import SynthMedConfig, make_item
from medgr2.evaluation.evaluate import predict
from medgr2.models.factory import load_vlm
from medgr2.pipeline import run

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not real_layout.available(), reason=real_layout.SKIP_REASON)]

# The qwen configs as a user runs them (LoRA on, bf16 -> fp32 on CPU), at test size.
SMALL = ["model.dtype=float32", "model.image_size=56", "data.n_pretrain=16", "data.n_train=32", "data.n_val=8",
         "data.n_test=8", "evaluate.batch_size=4", "evaluate.max_new_tokens=8", "evaluate.limit=4",
         "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "print_config=false"]


@pytest.fixture(scope="session")
def real_ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real_layout")
    return {size: real_layout.build(root / size, size) for size in ("3b", "7b")}


def _cfg(tmp_path: Path, cache: Path, size: str, path: Path, *over: str):
    return compose_cfg(tmp_path, cache, f"model=qwen2_5_vl_{size}", f"model.path={path}", *SMALL, *over,
                       test_size=False)


def _metric_history(cfg, stage: str, key: str) -> list[float]:
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.logger.experiment], filter_string=f"tags.stage = '{stage}'")
    client = mlflow.MlflowClient()
    return [m.value for rid in runs["run_id"] for m in client.get_metric_history(rid, key)]


@pytest.mark.parametrize("size", ["7b"])  # the 3B layout: SFT under FSDP2 and inside the loop, below
def test_sft_with_lora_trains_logs_letter_metrics_and_its_export_reloads_with_the_same_outputs(
        real_ckpts, tmp_path, shared_cache, size):
    base = real_ckpts[size]
    cfg = _cfg(tmp_path, shared_cache, size, base, "stage=sft", "stage.max_steps=2", "stage.train_size=8",
               "stage.batch_size=4", "stage.val_every=2", "stage.val_size=4", "stage.lr=1e-2",
               "experiment_name=real_sft")
    assert cfg.model.lora.enabled
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and math.isfinite(metrics["test/auc"])
    # Letter metrics are logged under Qwen's tokenizer too (it merges the letter into ">B").
    for key in ("train/loss", "train/letter_loss", "train/letter_acc", "val/letter_loss"):
        hist = _metric_history(cfg, "sft", key)
        assert hist and all(math.isfinite(v) for v in hist), key
    params = mlflow.get_run(mlflow.search_runs(experiment_names=[cfg.logger.experiment])["run_id"][0]).data.params
    assert params["decoding/evaluate/repetition_penalty"] == "1.0"
    assert params["decoding/evaluate/do_sample"] == "False"
    # The export: LoRA merged into the real-layout weights, processor saved beside them; it reloads as its base did.
    out = Path(cfg.paths.output_dir) / "policy"
    policy = load_file(str(out / "model.safetensors"))
    changed = [k for k in policy if "q_proj" in k or "v_proj" in k]
    assert changed
    model, processor = load_vlm(cfg.model, weights=str(out), lora=False)
    assert model.config.text_config.vocab_size == (151936 if size == "3b" else 152064)
    assert model.config.tie_word_embeddings == (size == "3b")
    base_model, _ = load_vlm(cfg.model, weights=str(base), lora=False)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), base_model.parameters(), strict=True))
    preds = [json.loads(x) for x in (Path(cfg.paths.output_dir) / "predictions.jsonl").read_text().splitlines()]
    # The reloaded export predicts what the trained module predicted at the end of the stage (same test rows,
    # same prompt).
    from medgr2.pipeline.common import instruction, load_split

    again = predict(model, processor, load_split(cfg, "test", limit=4), instruction=instruction(cfg),
                    batch_size=4, max_new_tokens=8, progress=False)
    assert [p["completion"] for p in again] == [p["completion"] for p in preds]
    for a, b in zip(again, preds, strict=True):
        assert a["option_probs"] == pytest.approx(b["option_probs"], abs=1e-4)
    # The saved processor is the base's: same token ids and pixels for the same item.
    from medgr2.data.collate import ChatCollator
    from medgr2.models.processor import load_processor

    item = {"image": make_item(SynthMedConfig(), "test", 0)["image"], "prompt": "q?", "prefix": "", "target": ""}
    a = ChatCollator(processor, generation=True)([item])
    b = ChatCollator(load_processor(str(base), image_size=56), generation=True)([item])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert type(processor).__name__ in ("ImageOnlyQwen2_5_VLProcessor", "Qwen2_5_VLProcessor")


def test_grpo_with_repeat_rollouts_runs_on_the_untied_7b_layout(real_ckpts, tmp_path, shared_cache):
    # rollout=expand (the default) runs on the 3B layout inside the loop test.
    cfg = _cfg(tmp_path, shared_cache, "7b", real_ckpts["7b"], "stage=grpo", "stage.rollout=repeat",
               "stage.max_steps=1", "stage.train_size=4", "stage.batch_size=2", "stage.num_generations=2",
               "stage.max_new_tokens=6", "stage.alpha=0.0", "stage.beta_match=1.0", "stage.lr=1e-3",
               "evaluate.limit=2")
    metrics = run(cfg)
    assert metrics["nan_batches"] == 0.0 and 0.0 <= metrics["test/acc"] <= 1.0
    assert all(math.isfinite(v) for v in _metric_history(cfg, "grpo", "train/loss"))
    assert (Path(cfg.paths.output_dir) / "policy" / "model.safetensors").exists()


def test_reward_model_on_the_real_layout_exports_and_scores_the_same_after_reload(real_ckpts, tmp_path):
    from medgr2.data.reward_items import reward_item
    from medgr2.modules.reward import RewardRegressor
    from medgr2.modules.reward_scorer import RewardScorer

    spec = {"name": "qwen2_5_vl_3b", "path": str(real_ckpts["3b"]), "dtype": "float32", "image_size": 56,
            "lora": {"enabled": True, "r": 4, "alpha": 8}}
    torch.manual_seed(0)
    module = RewardRegressor(spec, head_hidden=8, target_mean=2.5, target_std=6.0)
    for p in module.head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    rows = [{**make_item(SynthMedConfig(), "train", i), "response": f"<think>x</think><answer>{'ABCD'[i]}</answer>"}
            for i in range(3)]
    from medgr2.training.reward_collate import RewardCollator

    items = [{**reward_item(r), "score_target": 10.0 - 5.0 * i} for i, r in enumerate(rows)]
    batch = RewardCollator(module.processor)(items)
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in module.model.named_parameters()
               if "lora" in n)
    module.eval()
    with torch.no_grad():
        direct = module(batch).tolist()
    export = module.export(tmp_path / "rm")
    scored = RewardScorer(export, device="cpu").score(rows)
    assert scored == pytest.approx(direct, abs=1e-4)


def test_inspect_reports_the_real_layouts_image_tokens_and_logit_memory(real_ckpts, tmp_path, shared_cache):
    # The qwen config's pixel bounds (50,176..401,408): a 512x512 image -> 18x18 = 324 tokens.
    cfg = compose_cfg(tmp_path, shared_cache, "stage=inspect", "logger=none", "model=qwen2_5_vl_3b",
                      f"model.path={real_ckpts['3b']}", "data.n_pretrain=16", "data.n_train=16", "data.n_val=4",
                      "data.n_test=4", "data.image_size=512", "stage.seq_rows=8", "print_config=false",
                      test_size=False)
    metrics = run(cfg)
    assert metrics["data/image_tokens/max"] == 324.0
    seq = json.loads((Path(cfg.paths.output_dir) / "data_stats.json").read_text())["sequences"]
    assert seq["vocab"] == 151936 and seq["logits_gb"]["full"] > 5 * seq["logits_gb"]["answer_only"]


LOOP_T1 = ["stage=loop", "stage.iterations=1", "stage.generate.n_sources=12", "stage.seed_size=4",
           "stage.sft.max_steps=1", "stage.sft.batch_size=4", "stage.sft.val_size=4", "stage.grpo.max_steps=1",
           "stage.grpo.train_size=4", "stage.grpo.batch_size=2", "stage.grpo.num_generations=2",
           "stage.grpo.max_new_tokens=6", "stage.reward.max_steps=1", "stage.reward.source.size=8",
           "stage.reward.max_val_sources=2", "data.n_train=64"]


def test_loop_with_one_iteration_runs_every_stage_on_the_3b_layout(real_ckpts, tmp_path, shared_cache):
    from medgr2.pipeline.loop_state import loop_dir

    cfg = _cfg(tmp_path, shared_cache, "3b", real_ckpts["3b"], *LOOP_T1, "logger=none")
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and math.isfinite(metrics["test/auc"])
    steps = set(json.loads((loop_dir(cfg) / "loop_state.json").read_text())["steps"])
    assert {"setup/reward0", "setup/seed", "iter0/generate", "iter0/score", "iter0/select", "iter0/sft",
            "iter0/grpo"} <= steps


def test_fsdp2_sft_on_the_3b_layout_shards_trains_logs_letter_metrics_and_exports(real_ckpts, tmp_path,
                                                                                  shared_cache):
    env = {**os.environ, "MEDGR2_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    over = ["model=qwen2_5_vl_3b", f"model.path={real_ckpts['3b']}", *SMALL, f"paths.cache_dir={shared_cache}",
            "trainer=fsdp2_cpu", "stage=sft", "stage.max_steps=2", "stage.train_size=8", "stage.batch_size=2",
            "stage.val_every=2", "stage.val_size=4", "stage.lr=1e-2", "stage.evaluate=false",
            "experiment_name=real_fsdp2"]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *over], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    cfg = compose_cfg(tmp_path, shared_cache, *over, test_size=False)
    for key in ("train/loss", "train/letter_loss", "train/letter_acc"):
        hist = _metric_history(cfg, "sft", key)
        assert hist and all(math.isfinite(v) for v in hist), key
    (run_dir,) = [p for p in tmp_path.glob("outputs/sft/*") if (p / "policy").exists()]
    model, _ = load_vlm(cfg.model, weights=str(run_dir / "policy"), lora=False)
    base, _ = load_vlm(cfg.model, weights=str(real_ckpts["3b"]), lora=False)
    assert model.config.tie_word_embeddings and model.config.text_config.vocab_size == 151936
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), base.parameters(), strict=True))
