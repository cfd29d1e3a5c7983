"""``stage=inspect``: statistics of a data config before anyone spends GPU hours on it."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from omegaconf import DictConfig

from medgr2.configs.stages import InspectConfig
from medgr2.data.stats import dataset_stats, format_leakage, format_stats
from medgr2.pipeline.common import load_omnimedvqa_from_config, load_split, output_dir, to_dict
from medgr2.pipeline.tracking import Tracker
from medgr2.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def _sequence_report(cfg: DictConfig, records) -> dict | None:
    """Image tokens and prompt+answer lengths under this model config (None, with the reason logged, when the
    model's processor cannot be loaded, e.g. a hub id on an offline machine)."""
    from transformers import AutoConfig

    from medgr2.data.synthmed import tokenizer_corpus
    from medgr2.models.factory import ModelSpec, resolve_model_path
    from medgr2.models.processor import load_processor
    from medgr2.pipeline.common import instruction
    from medgr2.pipeline.seq_stats import format_sequence_stats, sequence_stats

    spec = ModelSpec.from_config(cfg.model)
    try:
        path = resolve_model_path(spec, tokenizer_corpus)
        processor = load_processor(path, spec.image_size, spec.min_pixels, spec.max_pixels, spec.trust_remote_code)
        vocab = AutoConfig.from_pretrained(path).get_text_config().vocab_size  # the LM head's rows
    except (OSError, ValueError) as exc:
        log.warning("sequence lengths unknown: cannot load the processor of model %r: %s", spec.path or spec.name,
                    exc)
        return None
    stats = sequence_stats(records, processor, instruction(cfg), think=bool(cfg.get("think", True)),
                           vocab_size=vocab)
    print(format_sequence_stats(stats))
    return stats


def run_inspect(cfg: DictConfig, tracker: Tracker) -> dict[str, float]:
    st = InspectConfig.from_node(to_dict(cfg.stage))  # unknown keys and bad values fail here, before any work
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    warnings: Counter = Counter()
    warning_examples: dict[str, list[str]] = {}
    extra: dict[str, Any] = {}
    if cfg.data.name == "omnimedvqa":
        res = load_omnimedvqa_from_config(cfg, None)
        records, skipped, examples = res.records, res.skipped, res.examples
        warnings, warning_examples = res.warnings, res.warning_examples
        stats = dataset_stats(records)
        extra = _omnimedvqa_report(res)
        seq_rows = records[: st.seq_rows or len(records)]
    else:
        splits = list(st.splits)
        stats = {}
        rows, seq_rows = [], []
        n_seq = st.seq_rows or 10**9
        for sp in splits:
            ds = load_split(cfg, sp)
            rows.extend(ds.remove_columns("image").to_list())
            seq_rows.extend(ds.select(range(min(len(ds), max(0, n_seq - len(seq_rows))))).to_list())
        stats = dataset_stats(rows)
    text = format_stats(stats, skipped, examples=examples, warnings=warnings, warning_examples=warning_examples)
    if extra:
        text += format_leakage(extra["leakage"], extra["attributes"], filtered=extra["filtered"])
    print(text)
    seq = _sequence_report(cfg, seq_rows) if st.sequences else None
    out = output_dir(cfg) / "data_stats.json"
    atomic_write_json(out, {"stats": stats, "skipped": dict(skipped), "examples": examples,
                            "warnings": dict(warnings), "warning_examples": warning_examples,
                            "sequences": seq, **extra})
    tracker.log_artifact(out)
    metrics = {"data/total": float(stats["total"]), "data/skipped": float(sum(skipped.values()))}
    metrics.update({f"data/skipped/{k}": float(v) for k, v in skipped.items()})
    metrics.update({f"data/warnings/{k}": float(v) for k, v in warnings.items()})
    if seq is not None:
        for key in ("image_tokens", "sequence_tokens"):
            metrics.update({f"data/{key}/{k}": v for k, v in seq[key].items()})
    if extra:
        metrics.update(extra["metrics"])
    tracker.log_metrics(metrics)
    return metrics


def _omnimedvqa_report(res) -> dict[str, Any]:
    """Leakage between the train and test split (by path and content), attribute sources, and their metrics."""
    from medgr2.data.leakage import leakage_report

    leak = leakage_report(res.records)
    shared = max(leak.shared_by_path, leak.shared_by_content)
    if shared and not res.filtered.get("image_disjoint"):
        log.warning("OmniMedVQA: %d images are in both the train and the test split (%d by path, %d by content; "
                    "%d train / %d test questions); data.image_disjoint=true removes their training questions",
                    shared, leak.shared_by_path, leak.shared_by_content, leak.train_questions, leak.test_questions)
    metrics = leak.metrics()
    metrics.update({f"data/attributes/{k.replace(' <- ', '_from_').replace(' ', '_').replace('/', '_')}": float(v)
                    for k, v in res.attributes.items()})
    metrics.update({f"data/filtered/{k}": float(v) for k, v in res.filtered.items()})
    return {"leakage": leak.as_dict(), "attributes": dict(res.attributes), "filtered": dict(res.filtered),
            "metrics": metrics}
