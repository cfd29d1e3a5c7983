"""What one run row says (its tags, metrics, seed, sweep keys, group metrics) and which rows are evaluations.

A run row is one record of :func:`medgr2.report.mlflow_runs.load_runs` (``metrics.<key>``, ``tags.<key>``, ...).
Every table builder returns a ``DataFrame`` whose ``attrs`` say what was left out and why (:func:`finish`):

- ``attrs["skipped"]``: one dict per run that could have contributed but could not (``run_id``, ``run_name``,
  ``experiment``, ``stage``, ``section``, ``reason``; :func:`skip`), e.g. a run without ``test/acc``;
- ``attrs["notes"]``: sentences for the report, e.g. "3 finished runs share the row …; used the latest";
- ``attrs["used"]``: which run fills which row (``section``, ``row``, ``run_id``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medgr2.evaluation.metrics import metric_key

# Stages whose runs are expected to carry test metrics; runs of other stages without any ``test/`` metric
# (generate, select, reward, ...) are not evaluation runs and are only counted, not listed one by one.
EVAL_STAGES = ("sft", "evaluate", "grpo", "loop")


def tag(row: Mapping[str, Any], key: str) -> str | None:
    """A run's tag value, ``None`` when absent."""
    v = row.get(f"tags.{key}")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else str(v)


def metric(row: Mapping[str, Any], key: str) -> float:
    """A run's final metric value, NaN when absent."""
    v = row.get(f"metrics.{key}")
    return math.nan if v is None or pd.isna(v) else float(v)


def as_int(value: str | None) -> int | None:
    """``"1000"`` -> 1000; ``None`` for anything that is not an integer."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f == int(f) else None


def seed_of(row: Mapping[str, Any]) -> str:
    """The run's ``seed`` tag; ``?`` for runs logged before it existed (they count as one unknown seed)."""
    return tag(row, "seed") or "?"


def sweep_of(row: Mapping[str, Any]) -> str:
    """The run's ``sweep`` tag (what sets it apart within its recipe, without the seed); ``""`` when absent."""
    return tag(row, "sweep") or ""


def skip(row: Mapping[str, Any], section: str, reason: str) -> dict[str, str]:
    """One entry of the report's "skipped runs" list."""
    return {"run_id": str(row.get("run_id")), "run_name": str(row.get("run_name") or ""),
            "experiment": tag(row, "experiment") or "", "stage": tag(row, "stage") or "",
            "section": section, "reason": reason}


def records(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """The runs as a list of row dicts (empty for no runs)."""
    return [] if runs.empty else runs.to_dict("records")


def finish(df: pd.DataFrame, skipped: list, notes: list, used: list, **extra: Any) -> pd.DataFrame:
    """``df`` with its ``attrs`` set: ``skipped``, ``notes``, ``used`` (see the module docstring) and ``extra``."""
    df.attrs = {"skipped": skipped, "notes": notes, "used": used, **extra}
    return df


def canonical_group(name: str, known: Sequence[str]) -> str:
    """Map a metric-key or tag spelling (``Disease_Diagnosis``) back to its display name."""
    by_key = {metric_key(k).lower(): k for k in known}
    return by_key.get(metric_key(name).lower(), name)


def group_metrics(row: Mapping[str, Any], prefix: str, known: Sequence[str]) -> dict[str, float]:
    """``{display group: value}`` for every ``metrics.<prefix><group>`` present on the run."""
    out = {}
    for col, v in row.items():
        if col.startswith(f"metrics.{prefix}") and v is not None and not pd.isna(v):
            out[canonical_group(col[len(f"metrics.{prefix}"):], known)] = float(v)
    return out


def ordered(groups: Iterable[str], known: Sequence[str]) -> list[str]:
    """Known groups in their canonical order, then the rest alphabetically."""
    groups = set(groups)
    return [g for g in known if g in groups] + sorted(groups - set(known))


def mean_known(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN (a run without the metric); NaN when there are none."""
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def is_eval_run(row: Mapping[str, Any]) -> bool:
    """A run meant to be evaluated: it has some ``test/`` metric or is of an evaluating stage."""
    has_test = any(c.startswith("metrics.test/") and not pd.isna(v) for c, v in row.items())
    return has_test or tag(row, "stage") in EVAL_STAGES


def eval_records(runs: pd.DataFrame, section: str, skipped: list,
                 experiments: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Evaluation runs (of ``experiments`` when given) that have ``test/acc``; the others go to ``skipped``."""
    out = []
    for r in records(runs):
        if experiments is not None and tag(r, "experiment") not in experiments:
            continue
        if not is_eval_run(r):
            continue
        if math.isnan(metric(r, "test/acc")):
            skipped.append(skip(r, section, "no test/acc metric"))
            continue
        out.append(r)
    return out


def not_evaluated(runs: pd.DataFrame) -> dict[str, int]:
    """Runs that are not evaluation runs (no ``test/`` metric, non-evaluating stage), counted by stage."""
    counts: dict[str, int] = {}
    for r in records(runs):
        if not is_eval_run(r):
            s = tag(r, "stage") or "?"
            counts[s] = counts.get(s, 0) + 1
    return dict(sorted(counts.items()))
