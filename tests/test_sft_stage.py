"""SFT end to end on SynthMed: parameters change, loss falls, evaluation and MLflow run written."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import lightning as L
import mlflow
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from medgr2.data.collate import ChatCollator, vqa_item
from medgr2.data.synthmed import SynthMedConfig, make_item
from medgr2.modules.sft import SFTPolicy
from medgr2.pipeline import run
from medgr2.pipeline.pretrain import base_weights
from medgr2.training.item_dataset import ItemDataset


def test_sft_lowers_the_loss_on_a_fixed_batch_and_changes_parameters(shared_cache):
    module = SFTPolicy({"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(shared_cache)},
                       lr=3e-3, warmup_steps=0, total_steps=30)
    rows = [make_item(SynthMedConfig(), "train", i) for i in range(8)]
    collate = ChatCollator(module.processor)
    batch = collate([vqa_item(r, "") for r in rows])
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    with torch.no_grad():
        module.model.eval()
        from medgr2.data.collate import model_inputs
        from medgr2.rl.lm_loss import answer_nll

        loss0 = answer_nll(module.model(**model_inputs(batch)).logits, batch["labels"]).item()
    loader = DataLoader(ItemDataset(rows, lambda r: vqa_item(r, "")), batch_size=8, collate_fn=collate)
    trainer = L.Trainer(accelerator="cpu", max_steps=30, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    with torch.no_grad():
        module.model.eval()
        loss1 = answer_nll(module.model(**model_inputs(batch)).logits, batch["labels"]).item()
    assert math.isfinite(loss1) and loss1 < 0.7 * loss0
    changed = [n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2


def test_the_sft_module_takes_its_optimizer_config_from_the_stage_and_saves_it_flat(make_cfg, shared_cache):
    from medgr2.configs.training import OptimConfig, SFTConfig
    from medgr2.pipeline.common import to_dict

    s = SFTConfig.from_node(to_dict(make_cfg("stage=sft", "stage.lr=0.02", "stage.max_steps=7").stage))
    assert s.optim() == OptimConfig(lr=0.02, weight_decay=0.0, warmup_steps=s.warmup_steps, total_steps=7)
    spec = {"name": "tiny_vlm", "tiny": {}, "image_size": 56, "cache_dir": str(shared_cache)}
    module = SFTPolicy(spec, optim=s.optim())
    assert module.optim.total_steps == 7 and module.hparams["lr"] == 0.02  # plain values: weights_only checkpoints
    rebuilt = SFTPolicy(**dict(module.hparams))  # how a checkpoint's hyperparameters rebuild the module
    assert rebuilt.optim == module.optim
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert scheduler.base_lrs == [0.02] and scheduler.optimizer.param_groups[0]["weight_decay"] == 0.0


def test_sft_stage_trains_evaluates_and_writes_an_mlflow_run(make_cfg):
    cfg = make_cfg("stage=sft", "stage.max_steps=6", "stage.train_size=48", "stage.batch_size=8", "stage.val_every=3",
                   "stage.val_size=8", "evaluate.limit=20", "experiment_name=unit")
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test/chance"] > 0.2
    out = Path(cfg.paths.output_dir)
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 20 and {"id", "pred", "gold", "option_probs"} <= set(preds[0])
    # The policy export differs from the base it started from.
    base = load_file(str(Path(base_weights(cfg)) / "model.safetensors"))
    policy = load_file(str(out / "policy" / "model.safetensors"))
    assert any(not torch.equal(base[k], policy[k]) for k in base)

    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.logger.experiment])
    top = runs[runs["tags.stage"] == "sft"]
    assert len(top) == 1
    row = top.iloc[0]
    # Building the pretrained base on the way (if this session had not yet) is a nested run, not mixed in.
    nested = runs[runs["tags.stage"] == "pretrain"]
    if len(nested):
        assert all(nested["tags.mlflow.parentRunId"] == row["run_id"])
    assert row["status"] == "FINISHED"
    assert row["tags.stage"] == "sft" and row["tags.experiment"] == "unit" and row["tags.model"] == "tiny_vlm"
    assert row["params.stage.max_steps"] == "6"
    assert abs(row["metrics.test/acc"] - metrics["test/acc"]) < 1e-9
    assert "metrics.train/loss" in runs.columns and math.isfinite(row["metrics.train/loss"])
    arts = mlflow.MlflowClient().list_artifacts(row["run_id"])
    assert "predictions.jsonl" in {a.path for a in arts}
    # Artifacts live beside the store at the project root, not in the working directory.
    assert Path(cfg.logger.artifact_location).is_relative_to(Path(cfg.paths.root).resolve())


def test_a_second_run_reuses_the_cached_pretrained_base(make_cfg, caplog):
    cfg = make_cfg("stage=pretrain", "logger=none")
    first = Path(base_weights(cfg))
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="medgr2.pipeline.pretrain"):
        second = Path(base_weights(make_cfg("stage=sft", "logger=none")))
    assert second == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert any("reusing the cached pretrained base" in r.message for r in caplog.records)


def test_logger_none_writes_no_mlflow_store(make_cfg):
    cfg = make_cfg("stage=sft", "logger=none", "stage.max_steps=2", "stage.train_size=16", "stage.batch_size=8",
                   "stage.val_every=2", "stage.val_size=8", "evaluate.limit=4")
    run(cfg)
    assert not (Path(cfg.paths.root) / "mlflow.db").exists()


def test_a_killed_sft_run_resumes_from_its_last_checkpoint(make_cfg):
    common = ["stage=sft", "logger=none", "stage.train_size=32", "stage.batch_size=8", "stage.val_every=100",
              "stage.val_size=8", "stage.evaluate=false", "checkpoint.every_n_train_steps=2"]
    first = make_cfg(*common, "stage.max_steps=4")
    run(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert last.exists()
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    resumed = make_cfg(*common, "stage.max_steps=6", f"stage.ckpt_path={last}")
    run(resumed)
    ckpt2 = torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)
    assert ckpt2["global_step"] == 6


def test_the_report_table_reads_the_logged_accuracy_back(make_cfg):
    from medgr2.report.mlflow_runs import load_runs
    from medgr2.report.tables import qtype_table

    cfg = make_cfg("stage=sft", "stage.max_steps=2", "stage.train_size=16", "stage.batch_size=8", "stage.val_every=2",
                   "stage.val_size=8", "evaluate.limit=10", "experiment_name=tbl")
    metrics = run(cfg)
    runs = load_runs(cfg.logger.tracking_uri, tag="experiment", values=["tbl"], stage="sft")
    table = qtype_table(runs)
    assert f"| tbl | {100 * metrics['test/acc']:.1f} |" in table
    assert "_chance_" in table and "_majority_" in table
