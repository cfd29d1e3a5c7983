"""``stage=evaluate`` (also the end of ``stage=sft``): test-split metrics and per-question predictions."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from medgr2.configs.stages import EvaluateConfig
from medgr2.evaluation.evaluate import decoding_settings, predict
from medgr2.evaluation.metrics import summarize
from medgr2.models.decoding import as_params
from medgr2.pipeline.common import load_split, output_dir, to_dict
from medgr2.pipeline.tracking import Tracker
from medgr2.utils.io import atomic_write_text

log = logging.getLogger(__name__)


def evaluate_model(cfg: DictConfig, model, processor, tracker: Tracker, out: Path) -> dict[str, float]:
    """Evaluate on ``evaluate.split``; log metrics and the predictions file to the tracker."""
    from medgr2.pipeline.common import instruction

    e = EvaluateConfig.from_node(to_dict(cfg.evaluate))  # unknown keys and bad values fail here
    protocol = e.protocol
    rows = load_split(cfg, e.split, limit=e.limit)
    tracker.log_params(as_params(decoding_settings(e.max_new_tokens), "decoding/evaluate"))
    preds = predict(model, processor, rows, instruction=instruction(cfg), batch_size=e.batch_size,
                    max_new_tokens=e.max_new_tokens, protocol=protocol)
    metrics = summarize([p["pred"] for p in preds], [p["gold"] for p in preds], [p["n_options"] for p in preds],
                        [p["modality"] for p in preds], [p["question_type"] for p in preds],
                        option_probs=[p["option_probs"] for p in preds])
    metrics = {f"test/{k}": v for k, v in metrics.items()}
    # Chance and majority baselines per question type, beside each accuracy (README tables use them).
    from medgr2.evaluation.metrics import chance_accuracy, majority_accuracy, metric_key

    for qt in sorted({p["question_type"] for p in preds}):
        sub = [p for p in preds if p["question_type"] == qt]
        metrics[f"test/chance/qtype/{metric_key(qt)}"] = chance_accuracy([p["n_options"] for p in sub])
        metrics[f"test/majority/qtype/{metric_key(qt)}"] = majority_accuracy([p["gold"] for p in sub])
    path = out / "predictions.jsonl"
    atomic_write_text(path, "".join(json.dumps(p) + "\n" for p in preds))
    tracker.log_metrics(metrics)
    tracker.set_tags({"protocol": protocol})  # also a param (evaluate.protocol); the report reads the tag
    tracker.log_artifact(path)
    log.info("test accuracy %.3f (chance %.3f, majority %.3f) on %d questions, protocol %s",
             metrics["test/acc"], metrics["test/chance"], metrics["test/majority"], len(preds), protocol)
    return metrics


def run_evaluate(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    from medgr2.data.synthmed import tokenizer_corpus
    from medgr2.models.factory import load_vlm
    from medgr2.pipeline.pretrain import base_weights

    weights = EvaluateConfig.from_node(to_dict(cfg.evaluate)).weights or base_weights(cfg, tracker)
    model, processor = load_vlm(cfg.model, weights=weights, corpus_fn=tokenizer_corpus, lora=False)
    return evaluate_model(cfg, model, processor, tracker, output_dir(cfg))
