"""``stage=inspect``: statistics of a data config before anyone spends GPU hours on it."""

from __future__ import annotations

from collections import Counter

from omegaconf import DictConfig

from medgr2.data.stats import dataset_stats, format_stats
from medgr2.pipeline.common import load_omnimedvqa_from_config, load_split, output_dir
from medgr2.pipeline.tracking import Tracker
from medgr2.utils.io import atomic_write_json


def run_inspect(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    warnings: Counter = Counter()
    warning_examples: dict[str, list[str]] = {}
    if cfg.data.name == "omnimedvqa":
        res = load_omnimedvqa_from_config(cfg, None)
        records, skipped, examples = res.records, res.skipped, res.examples
        warnings, warning_examples = res.warnings, res.warning_examples
        stats = dataset_stats(records)
    else:
        splits = list(cfg.stage.get("splits") or ["train", "val", "test"])
        stats = {}
        rows = []
        for sp in splits:
            ds = load_split(cfg, sp)
            rows.extend(ds.remove_columns("image").to_list())
        stats = dataset_stats(rows)
    text = format_stats(stats, skipped, examples=examples, warnings=warnings, warning_examples=warning_examples)
    print(text)
    out = output_dir(cfg) / "data_stats.json"
    atomic_write_json(out, {"stats": stats, "skipped": dict(skipped), "examples": examples,
                            "warnings": dict(warnings), "warning_examples": warning_examples})
    tracker.log_artifact(out)
    metrics = {"data/total": float(stats["total"]), "data/skipped": float(sum(skipped.values()))}
    metrics.update({f"data/skipped/{k}": float(v) for k, v in skipped.items()})
    metrics.update({f"data/warnings/{k}": float(v) for k, v in warnings.items()})
    tracker.log_metrics(metrics)
    return metrics
