"""The scoring protocol in the report: which one each run used, and rescoring saved predictions with another.

Runs record their protocol as the tag ``protocol`` (and the param ``evaluate.protocol``); runs from before
protocols existed used ``lenient``. ``python -m medgr2.report --protocol X`` rescores every evaluation run's
``predictions.jsonl`` under X (:func:`medgr2.evaluation.protocols.rescore`) and replaces its ``test/`` metrics
before any table is built, so numbers under different protocols are never mixed silently.
"""

from __future__ import annotations

import pandas as pd

from medgr2.evaluation.metrics import summarize
from medgr2.evaluation.protocols import DEFAULT_PROTOCOL, check_protocol, rescore
from medgr2.report.mlflow_runs import read_predictions
from medgr2.report.run_rows import is_eval_run

__all__ = ["protocol_label", "read_scored", "rescore_runs", "rescored_metrics"]


def rescored_metrics(predictions: pd.DataFrame, protocol: str) -> dict[str, float]:
    """``test/...`` metrics of saved predictions scored again under ``protocol`` (raises ValueError when the
    predictions lack what the protocol needs)."""
    rows = rescore(predictions.to_dict("records"), protocol)
    probs = [r["option_probs"] for r in rows] if "option_probs" in predictions else None
    m = summarize([r["pred"] for r in rows], [r["gold"] for r in rows], [int(r["n_options"]) for r in rows],
                  [r["modality"] for r in rows], [r["question_type"] for r in rows], option_probs=probs)
    return {f"test/{k}": v for k, v in m.items()}


def read_scored(tracking_uri: str, run_id: str, protocol: str | None) -> pd.DataFrame:
    """A run's saved predictions, their ``pred`` rescored under ``protocol`` when one is given, so the
    per-question intervals and paired tests use the same scoring as the tables."""
    frame = read_predictions(tracking_uri, run_id)
    if not protocol:
        return frame
    return pd.DataFrame(rescore(frame.to_dict("records"), protocol))


def rescore_runs(runs: pd.DataFrame, tracking_uri: str, protocol: str) -> tuple[pd.DataFrame, list[str]]:
    """A copy of ``runs`` whose evaluation runs carry metrics rescored under ``protocol``; and notes naming
    the runs that could not be rescored (no predictions artifact, or one without raw responses), which keep
    the metrics of their own protocol (their ``protocol`` tag says which)."""
    check_protocol(protocol)
    runs = runs.copy()
    notes: list[str] = []
    done = 0
    for i, row in runs.iterrows():
        if not is_eval_run(row):
            continue
        rid = str(row["run_id"])
        try:
            metrics = rescored_metrics(read_predictions(tracking_uri, rid), protocol)
        except Exception as exc:  # noqa: BLE001 - a missing or old artifact leaves the run as it was logged
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            notes.append(f"Run {rid[:8]} not rescored under `{protocol}` ({first}); it keeps its own protocol.")
            continue
        for key, value in metrics.items():
            runs.loc[i, f"metrics.{key}"] = value
        runs.loc[i, "tags.protocol"] = protocol
        done += 1
    notes.insert(0, f"Rescored {done} evaluation runs' saved predictions under the `{protocol}` protocol.")
    return runs, notes


def protocol_label(runs: pd.DataFrame) -> str:
    """``"protocol: lenient"`` for the evaluation runs in ``runs``, or a warning listing several."""
    found = set()
    for _, row in runs.iterrows():
        if is_eval_run(row):
            value = row.get("tags.protocol")
            found.add(DEFAULT_PROTOCOL if value is None or pd.isna(value) else str(value))
    if len(found) > 1:
        return "protocols: " + ", ".join(sorted(found)) + " (mixed: not comparable; rescore with --protocol)"
    return f"protocol: {found.pop() if found else DEFAULT_PROTOCOL}"
