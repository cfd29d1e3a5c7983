"""Read finished runs and their ``predictions.jsonl`` back from an MLflow store (the report never trains).

:func:`load_runs` gives one row per run — ``run_id``, ``run_name``, ``status``, ``start_time``, ``artifact_uri``,
``metrics.<key>``, ``tags.<key>`` — the ``DataFrame`` every table and figure of the report is a pure function of.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

PARENT_TAG = "mlflow.parentRunId"


def _run_row(run) -> dict[str, Any]:
    info, data = run.info, run.data
    row: dict[str, Any] = {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "status": info.status,
        "start_time": pd.Timestamp(info.start_time, unit="ms", tz="UTC") if info.start_time else pd.NaT,
        "artifact_uri": info.artifact_uri,
    }
    row.update({f"metrics.{k}": float(v) for k, v in data.metrics.items()})
    row.update({f"tags.{k}": str(v) for k, v in data.tags.items()})
    return row


def load_runs(tracking_uri: str, experiment: str = "medgr2", tag: str | None = None,
              values: Sequence[str] | None = None, stage: str | None = None, *,
              tags: Mapping[str, Sequence[str]] | None = None, top_level_only: bool = True) -> pd.DataFrame:
    """Finished runs of the MLflow ``experiment``, oldest first, as one row per run.

    Only ``FINISHED`` runs count; with ``top_level_only`` runs carrying ``mlflow.parentRunId`` (children of a
    loop or of a stage's nested pretraining) are dropped. ``stage``, ``tag``/``values`` and ``tags``
    (``{"experiment": ["topk", "randk"]}``) keep only runs whose tag is one of the values.
    ``attrs["ignored"]`` counts what was dropped: ``children``, ``not_finished`` (by status), ``filtered``.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    found = []
    if exp is not None:
        token = None
        while True:
            page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token,
                                      order_by=["attributes.start_time ASC"])
            found.extend(page)
            token = page.token
            if not token:
                break
    runs = pd.DataFrame([_run_row(r) for r in found],
                        columns=None if found else ["run_id", "run_name", "status", "start_time", "artifact_uri"])
    ignored: dict[str, Any] = {"experiment_found": exp is not None, "total": len(runs)}
    if not runs.empty:
        runs = runs.sort_values(["start_time", "run_id"], kind="stable")
    finished = runs["status"] == "FINISHED"
    ignored["not_finished"] = runs.loc[~finished, "status"].value_counts().to_dict()
    runs = runs[finished]
    if top_level_only and f"tags.{PARENT_TAG}" in runs:
        child = runs[f"tags.{PARENT_TAG}"].notna()
        ignored["children"] = int(child.sum())
        runs = runs[~child]
    else:
        ignored["children"] = 0
    want: dict[str, list[str]] = {k: [str(v) for v in vs] for k, vs in (tags or {}).items()}
    if stage:
        want.setdefault("stage", []).append(stage)
    if tag and values:
        want.setdefault(tag, []).extend(str(v) for v in values)
    n = len(runs)
    runs = filter_runs(runs, want)
    ignored["filtered"] = n - len(runs)
    runs.attrs = {"ignored": ignored, "tracking_uri": tracking_uri, "experiment": experiment}
    return runs


def filter_runs(runs: pd.DataFrame, tags: Mapping[str, Sequence[str]] | None) -> pd.DataFrame:
    """Runs whose tag ``key`` is one of the values, for every ``key`` in ``tags`` (a run lacking it is out)."""
    for key, vals in (tags or {}).items():
        col = f"tags.{key}"
        runs = runs[runs[col].isin([str(v) for v in vals])] if col in runs else runs.iloc[0:0]
    return runs.reset_index(drop=True)


def has_artifact(tracking_uri: str, run_id: str, path: str = "predictions.jsonl") -> bool:
    """Whether the run has an artifact ``path`` at its artifact root (False when it cannot be listed)."""
    from mlflow.tracking import MlflowClient

    try:
        return any(a.path == path for a in MlflowClient(tracking_uri).list_artifacts(run_id))
    except Exception:  # noqa: BLE001 - an unreachable artifact store means "not available"
        return False


def read_predictions(tracking_uri: str, run_id: str, path: str = "predictions.jsonl") -> pd.DataFrame:
    """The run's ``predictions.jsonl`` artifact as a DataFrame (raises if the artifact is missing)."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in the report
    with tempfile.TemporaryDirectory() as tmp:
        local = MlflowClient(tracking_uri).download_artifacts(run_id, path, tmp)
        lines = Path(local).read_text(encoding="utf-8").splitlines()
    return pd.DataFrame([json.loads(line) for line in lines if line.strip()])
