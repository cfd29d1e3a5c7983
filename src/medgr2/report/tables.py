# Over ~450 lines: its split by responsibility is open work of issue 17 (see docs/architecture.md); behaviour is tested as it is.
"""Read finished runs back from MLflow and compute the paper's tables and figure data.

The report reads MLflow and never trains. Everything below :func:`load_runs` / :func:`read_predictions` is a
pure function of a runs ``DataFrame`` (one row per run: ``run_id``, ``run_name``, ``status``, ``start_time``,
``metrics.<key>``, ``tags.<key>``) and returns a ``DataFrame`` whose ``attrs`` say what was left out and why:

- ``attrs["skipped"]``: one dict per run that could have contributed but could not (``run_id``, ``run_name``,
  ``experiment``, ``stage``, ``section``, ``reason``), e.g. a run without ``test/acc``;
- ``attrs["notes"]``: sentences for the report, e.g. "3 finished runs share the row …; used the latest";
- ``attrs["used"]``: which run fills which row (``section``, ``row``, ``run_id``).

Accuracies stay fractions in [0, 1] here and in the CSV files; the Markdown and LaTeX renderers print percent.

``python -m medgr2.report.tables --tag experiment=sft_raw,sft_think`` prints one row per run: overall test
accuracy and per question type, each with chance and majority. ``python -m medgr2.report`` writes the full
report (tables, figures, ``report.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medgr2.data.schema import MODALITIES, QUESTION_TYPES
from medgr2.evaluation.metrics import chance_accuracy, error_transitions, metric_key
from medgr2.report import aggregate as A
from medgr2.report.aggregate import PredictionCache

PARENT_TAG = "mlflow.parentRunId"
# Stages whose runs are expected to carry test metrics; runs of other stages without any ``test/`` metric
# (generate, select, reward, ...) are not evaluation runs and are only counted, not listed one by one.
EVAL_STAGES = ("sft", "evaluate", "grpo", "loop")
# Tags that tell runs of the same recipe apart in a row label, in this order.
LABEL_TAGS = ("k", "source", "select_method", "grpo", "stage", "data", "model")
# Row order of recipes in tables (unknown recipes come after, alphabetically).
EXPERIMENT_ORDER = ("zero_shot", "sft_raw", "sft_think", "sft_rewarded", "rand_all", "randk", "topk",
                    "topk_grpo", "topk_grpo_match", "topk_grpo_match_train", "grpo", "default", "cross_modality", "cross_task")
# Table 2 rows: (row label, recipes in order of preference). "+GRPO" is the full pipeline (recipe ``grpo``:
# GRPO on the rewarded SFT policy); only when there is no such run, the TopK+GRPO run with the largest K.
TABLE2_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("zero_shot",)),
    ("SFT raw", ("sft_raw",)),
    ("SFT rewarded", ("sft_rewarded",)),
    ("+GRPO", ("grpo", "topk_grpo")),
)
TABLE2_METRICS = (("Acc", "test/acc"), ("F1", "test/f1"), ("AUC", "test/auc"))
# Figure 2 curves (recipe -> legend) and its horizontal reference line.
FIG2_SERIES = {"randk": "RandK", "topk": "TopK", "topk_grpo": "TopK+GRPO", "topk_stratified": "TopK (stratified)",
               "topk_balanced": "TopK (type x answer)", "topk_matched": "TopK (type x answer x letter)",
               "topk_grpo_match": "TopK+GRPO (match reward)",
               "topk_grpo_match_train": "TopK+GRPO (match reward, train questions)"}
FIG2_REFERENCE = ("rand_all", "Rand-all")
# Figure 4: test axis -> (recipe, metric prefix, canonical group names, column title).
TRANSFER_AXES = {
    "modality": ("cross_modality", "test/acc/modality/", MODALITIES, "test modality"),
    "question_type": ("cross_task", "test/acc/qtype/", QUESTION_TYPES, "test question type"),
}
TRANSITIONS = ("correct_to_correct", "wrong_to_correct", "correct_to_wrong", "wrong_to_wrong")


# ----------------------------------------------------------------------------------------------------------
# Reading MLflow


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


# ----------------------------------------------------------------------------------------------------------
# Small helpers on run rows


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


def skip(row: Mapping[str, Any], section: str, reason: str) -> dict[str, str]:
    """One entry of the report's "skipped runs" list."""
    return {"run_id": str(row.get("run_id")), "run_name": str(row.get("run_name") or ""),
            "experiment": tag(row, "experiment") or "", "stage": tag(row, "stage") or "",
            "section": section, "reason": reason}


def _rows(runs: pd.DataFrame) -> list[dict[str, Any]]:
    return [] if runs.empty else runs.to_dict("records")


def _finish(df: pd.DataFrame, skipped: list, notes: list, used: list, **extra: Any) -> pd.DataFrame:
    df.attrs = {"skipped": skipped, "notes": notes, "used": used, **extra}
    return df


def experiment_rank(name: str | None) -> tuple[int, str]:
    """Sort key putting recipes in :data:`EXPERIMENT_ORDER`, unknown ones after."""
    name = name or ""
    return (EXPERIMENT_ORDER.index(name) if name in EXPERIMENT_ORDER else len(EXPERIMENT_ORDER), name)


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


def is_eval_run(row: Mapping[str, Any]) -> bool:
    """A run meant to be evaluated: it has some ``test/`` metric or is of an evaluating stage."""
    has_test = any(c.startswith("metrics.test/") and not pd.isna(v) for c, v in row.items())
    return has_test or tag(row, "stage") in EVAL_STAGES


def row_labels(runs: pd.DataFrame, exclude: Sequence[str] = ()) -> pd.Series:
    """Human-readable row label per run.

    The ``policy`` tag when set; otherwise the recipe name plus the tags (:data:`LABEL_TAGS`, minus
    ``exclude``) whose values differ between runs of the same recipe, e.g. ``randk k=1000``; either way plus the
    other sweep keys (tag ``sweep``) when they differ within the recipe. The seed never splits a row.
    """
    if runs.empty:
        return pd.Series([], dtype=object, index=runs.index)
    recs = _rows(runs)
    by_exp: dict[str | None, list[dict]] = {}
    for r in recs:
        by_exp.setdefault(tag(r, "experiment"), []).append(r)
    labels = []
    for r in recs:
        peers = by_exp[tag(r, "experiment")]
        if tag(r, "policy"):
            rest = sweep_rest(r) if len({sweep_rest(p) for p in peers}) > 1 else ""
            labels.append(f"{tag(r, 'policy')} {rest}".strip())  # other sweep settings are other rows
            continue
        parts = [tag(r, "experiment") or "?"]
        for key in LABEL_TAGS:
            if key in exclude:
                continue
            if len({tag(p, key) for p in peers}) > 1 and tag(r, key) is not None:
                parts.append(f"{key}={tag(r, key)}")
        if len({sweep_rest(p) for p in peers}) > 1:  # other swept keys, e.g. stage.sft.max_steps=800
            parts.append(sweep_rest(r))
        labels.append(" ".join(p for p in parts if p))
    return pd.Series(labels, index=runs.index, dtype=object)


def sweep_rest(row: Mapping[str, Any], drop: Sequence[str] = LABEL_TAGS) -> str:
    """The run's sweep keys minus those a table already shows (``k``, ``source``, ...), as ``key=value ...``."""
    items = [i for i in sweep_of(row).split() if i.partition("=")[0] not in drop]
    return " ".join(items)


def one_sweep(chosen: Mapping[Any, list[dict[str, Any]]], section: str, notes: list[str],
              describe=str) -> dict[Any, list[dict[str, Any]]]:
    """Collapse groups keyed ``(key, sweep_rest)`` to ``key``: when one cell has runs of several other sweep
    settings, the setting with the latest run fills it and the report says which were left out."""
    by_key: dict[Any, list[tuple[str, list[dict[str, Any]]]]] = {}
    for (key, rest), runs in chosen.items():
        by_key.setdefault(key, []).append((rest, runs))
    out = {}
    for key, options in by_key.items():
        options.sort(key=lambda o: max(str(r.get("start_time")) for r in o[1]))
        out[key] = options[-1][1]
        if len(options) > 1:
            notes.append(f"{section}: {describe(key)} has runs of {len(options)} sweep settings; used "
                         f"'{options[-1][0] or 'none'}', not " + ", ".join(f"'{o[0] or 'none'}'" for o in options[:-1]) + ".")
    return out


def _when(row: Mapping[str, Any]) -> str:
    t = row.get("start_time")
    return "?" if t is None or pd.isna(t) else pd.Timestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def seed_of(row: Mapping[str, Any]) -> str:
    """The run's ``seed`` tag; ``?`` for runs logged before it existed (they count as one unknown seed)."""
    return tag(row, "seed") or "?"


def sweep_of(row: Mapping[str, Any]) -> str:
    """The run's ``sweep`` tag (what sets it apart within its recipe, without the seed); ``""`` when absent."""
    return tag(row, "sweep") or ""


def latest_by(records: list[dict[str, Any]], key, section: str, notes: list[str],
              describe=str) -> dict[Any, list[dict[str, Any]]]:
    """Group run records by ``key(record)`` plus their sweep keys, one run per seed in each group (the latest
    started of a seed; every such choice is noted), seeds in order. A group is one cell of a table."""
    groups: dict[Any, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        groups.setdefault(key(r), {}).setdefault(seed_of(r), []).append(r)
    chosen: dict[Any, list[dict[str, Any]]] = {}
    for k, by_seed in groups.items():
        picked = []
        for seed, rs in A.pairs(by_seed):
            rs = sorted(rs, key=lambda r: (pd.Timestamp(r["start_time"]) if not pd.isna(r.get("start_time"))
                                           else pd.Timestamp(0, tz="UTC"), r["run_id"]))
            picked.append(rs[-1])
            if len(rs) > 1:
                older = ", ".join(r["run_id"][:8] for r in rs[:-1])
                what = f" (seed {seed})" if seed != "?" else ""
                notes.append(f"{section}: {len(rs)} finished runs share the row {describe(k)}{what}; used the "
                             f"latest, {rs[-1]['run_id'][:8]} (started {_when(rs[-1])}), not {older}.")
        chosen[k] = picked
    return chosen


def seeds_text(runs: Sequence[Mapping[str, Any]]) -> str:
    """``"0, 1, 2"``: the seeds of a cell's runs."""
    return A.seed_label([seed_of(r) for r in runs])


def ids_text(runs: Sequence[Mapping[str, Any]]) -> str:
    """The cell's run ids, comma-separated (one id for one seed)."""
    return ",".join(r["run_id"] for r in runs)


def eval_records(runs: pd.DataFrame, section: str, skipped: list,
                 experiments: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Evaluation runs (of ``experiments`` when given) that have ``test/acc``; the others go to ``skipped``."""
    out = []
    for r in _rows(runs):
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
    for r in _rows(runs):
        if not is_eval_run(r):
            s = tag(r, "stage") or "?"
            counts[s] = counts.get(s, 0) + 1
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------------------------------------
# Table 1: accuracy per modality


def chance_by_modality(predictions: pd.DataFrame) -> dict[str, float]:
    """Expected accuracy of uniform guessing per modality and ``Overall``, from a predictions table with
    ``n_options``; empty when the column is missing."""
    if predictions.empty or "n_options" not in predictions or "modality" not in predictions:
        return {}
    out = {canonical_group(str(m), MODALITIES): chance_accuracy([int(n) for n in g["n_options"]])
           for m, g in predictions.groupby("modality")}
    out["Overall"] = chance_accuracy([int(n) for n in predictions["n_options"]])
    return out


def table1(runs: pd.DataFrame, chance: Mapping[str, Mapping[str, float]] | None = None,
           predictions: PredictionCache | None = None) -> pd.DataFrame:
    """Test accuracy per modality and overall, one row per policy and data set, then a chance row per data set.

    Columns: ``policy``, ``data``, one per modality present (canonical order), ``Overall`` with ``Overall lo``
    / ``Overall hi`` (95% interval, :func:`medgr2.report.aggregate.cell`), ``seeds``, ``run_id`` (the runs,
    comma-separated). Rows are identified by (data, label); the seeds of a row are averaged; several finished
    runs of one seed -> the latest one (noted). Chance per modality comes from ``test/chance/modality/<M>`` when
    logged, else from ``chance[data]`` (e.g. :func:`chance_by_modality` of a predictions file); overall chance
    is ``test/chance``.
    """
    skipped: list = []
    notes: list = []
    used: list = []
    recs = eval_records(runs, "table1", skipped)
    if not recs:
        return _finish(pd.DataFrame(columns=["policy", "data", "Overall", "run_id"]), skipped, notes, used)
    labels = row_labels(pd.DataFrame(recs), exclude=("data",)).tolist()
    for r, lab in zip(recs, labels, strict=True):
        r["_label"] = lab
        r["_data"] = tag(r, "data") or "?"
    chosen = latest_by(recs, lambda r: (r["_data"], r["_label"]), "Table 1", notes,
                       describe=lambda k: f"'{k[1]}' on {k[0]}")
    per_row = {k: [group_metrics(r, "test/acc/modality/", MODALITIES) for r in rs] for k, rs in chosen.items()}
    mods = ordered({m for g in per_row.values() for one in g for m in one}, MODALITIES)
    rows = []
    order = sorted(chosen, key=lambda k: (k[0], experiment_rank(tag(chosen[k][0], "experiment")),
                                          as_int(tag(chosen[k][0], "k")) or 0, k[1]))
    for k in order:
        rs = chosen[k]
        est = A.cell([metric(r, "test/acc") for r in rs], [r["run_id"] for r in rs], predictions)
        cells = {m: _mean([g.get(m, math.nan) for g in per_row[k]]) for m in mods}
        rows.append({"policy": k[1], "data": k[0], **cells, **A.interval_columns(est, "Overall"),
                     "seeds": len(rs), "run_id": ids_text(rs)})
        used += [{"section": "table1", "row": f"{k[1]} ({k[0]}) seed {seed_of(r)}", "run_id": r["run_id"]} for r in rs]
    for data in sorted({k[0] for k in chosen}):
        # The reference run: the latest one with per-modality chance logged, else the latest one.
        on_data = sorted((r for k in chosen if k[0] == data for r in chosen[k]),
                         key=lambda r: (str(r["start_time"]), r["run_id"]))
        with_chance = [r for r in on_data if group_metrics(r, "test/chance/modality/", MODALITIES)]
        ref = (with_chance or on_data)[-1]
        logged = group_metrics(ref, "test/chance/modality/", MODALITIES)
        extra = dict((chance or {}).get(data, {}))
        overall = metric(ref, "test/chance")
        rows.append({"policy": "chance", "data": data,
                     **{m: logged.get(m, extra.get(m, math.nan)) for m in mods},
                     "Overall": overall if not math.isnan(overall) else extra.get("Overall", math.nan),
                     "Overall lo": math.nan, "Overall hi": math.nan, "seeds": pd.NA, "run_id": ref["run_id"]})
        if not logged and not extra and mods:
            notes.append(f"Table 1: no per-modality chance on {data} (no test/chance/modality/* metrics and "
                         "no predictions with n_options).")
    df = pd.DataFrame(rows)
    df["seeds"] = df["seeds"].astype("Int64")
    return _finish(df, skipped, notes, used)


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


# ----------------------------------------------------------------------------------------------------------
# Table 2: ablation


def table2(runs: pd.DataFrame, predictions: PredictionCache | None = None) -> pd.DataFrame:
    """Ablation: rows base / SFT raw / SFT rewarded / +GRPO, columns (``<data>/test``, Acc|F1|AUC with
    ``<m> lo`` / ``<m> hi`` 95% intervals, then ``seeds``).

    Rows come from :data:`TABLE2_ROWS`; one column group per ``data`` tag seen on those recipes' runs. A cell
    averages the recipe's seeds (Acc's interval also covers the test questions when predictions exist; F1 and
    AUC: the seed spread only). A row without a run on an eval set stays NaN and is listed in
    ``attrs["missing"]``; ``attrs["groups"]`` maps (row, data) to the runs used.
    """
    skipped: list = []
    notes: list = []
    used: list = []
    missing: list = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    wanted = [e for _, exps in TABLE2_ROWS for e in exps]
    recs = eval_records(runs, "table2", skipped, experiments=wanted)
    datas = sorted({tag(r, "data") or "?" for r in recs})
    metric_cols = [c for m, _ in TABLE2_METRICS for c in (m, f"{m} lo", f"{m} hi")] + ["seeds"]
    cols = pd.MultiIndex.from_tuples([(f"{d}/test", c) for d in datas for c in metric_cols],
                                     names=["eval set", "metric"]) if datas else \
        pd.MultiIndex.from_arrays([[], []], names=["eval set", "metric"])
    table = pd.DataFrame(np.nan, index=pd.Index([name for name, _ in TABLE2_ROWS], name="policy"), columns=cols)
    for name, exps in TABLE2_ROWS:
        for d in datas:
            pick = None
            for e in exps:
                cands = [r for r in recs if tag(r, "experiment") == e and (tag(r, "data") or "?") == d]
                if not cands:
                    continue
                if e == "topk_grpo" and exps[0] != e:
                    best = max(as_int(tag(r, "k")) or -1 for r in cands)
                    cands = [r for r in cands if (as_int(tag(r, "k")) or -1) == best]
                    notes.append(f"Table 2: no '{exps[0]}' run on {d}; '{name}' uses topk_grpo with the "
                                 f"largest K ({best if best >= 0 else 'no k tag'}).")
                label = f"'{name}' ({e}) on {d}"
                by_sweep = latest_by(cands, lambda r: (0, sweep_rest(r)), "Table 2", notes,
                                     describe=lambda _k, lab=label: lab)
                pick = one_sweep(by_sweep, "Table 2", notes, describe=lambda _k, lab=label: lab)[0]
                break
            if pick is None:
                missing.append(f"{name} on {d}: no finished run of {' / '.join(exps)} with test/acc")
                continue
            ids = [r["run_id"] for r in pick]
            for m, key in TABLE2_METRICS:
                est = A.cell([metric(r, key) for r in pick], ids, predictions, use_questions=(key == "test/acc"))
                for col, v in A.interval_columns(est, m).items():
                    table.loc[name, (f"{d}/test", col)] = v
            table.loc[name, (f"{d}/test", "seeds")] = len(pick)
            groups[(name, d)] = pick
            used += [{"section": "table2", "row": f"{name} ({d}) seed {seed_of(r)}", "run_id": r["run_id"]}
                     for r in pick]
    for d in datas:
        table[(f"{d}/test", "seeds")] = table[(f"{d}/test", "seeds")].astype("Int64")
    if not datas:
        missing.extend(f"{name}: no finished run of {' / '.join(exps)} with test/acc" for name, exps in TABLE2_ROWS)
    return _finish(table, skipped, notes, used, missing=missing, groups=groups)


# ----------------------------------------------------------------------------------------------------------
# Figure 2: accuracy vs K


def fig2_points(runs: pd.DataFrame, predictions: PredictionCache | None = None) -> pd.DataFrame:
    """Points of Figure 2: ``data``, ``series`` (RandK / TopK / TopK+GRPO / Rand-all), ``experiment``, ``k``,
    ``acc`` (mean over seeds) with ``acc lo`` / ``acc hi`` (95% interval), ``seeds``, ``run_id`` (the runs,
    comma-separated); one point per (data, series, k). Rand-all rows are the reference line (their ``k`` is
    the tag when present). Curve runs without an integer ``k`` tag are skipped."""
    skipped: list = []
    notes: list = []
    used: list = []
    ref_exp, ref_name = FIG2_REFERENCE
    recs = eval_records(runs, "fig2", skipped, experiments=[*FIG2_SERIES, ref_exp])
    keep = []
    for r in recs:
        e = tag(r, "experiment")
        k = as_int(tag(r, "k"))
        if e != ref_exp and k is None:
            reason = "no k tag" if tag(r, "k") is None else f"k tag {tag(r, 'k')!r} is not an integer"
            skipped.append(skip(r, "fig2", reason))
            continue
        r["_series"] = ref_name if e == ref_exp else FIG2_SERIES[e]
        r["_k"] = None if e == ref_exp else k
        r["_data"] = tag(r, "data") or "?"
        keep.append(r)

    def describe(k) -> str:
        return f"{k[1]}" + (f" K={k[2]}" if k[2] is not None else "") + f" on {k[0]}"

    by_sweep = latest_by(keep, lambda r: ((r["_data"], r["_series"], r["_k"]), sweep_rest(r)), "Figure 2", notes,
                         describe=lambda k: describe(k[0]))
    chosen = one_sweep(by_sweep, "Figure 2", notes, describe=describe)
    series_order = [*FIG2_SERIES.values(), ref_name]
    rows = []
    groups: dict[tuple[str, str, int | None], list[dict[str, Any]]] = {}  # (data, series, k) -> runs
    for key in sorted(chosen, key=lambda k: (k[0], series_order.index(k[1]), k[2] or 0)):
        rs = chosen[key]
        groups[key] = rs
        k = key[2] if key[2] is not None else as_int(tag(rs[-1], "k"))
        est = A.cell([metric(r, "test/acc") for r in rs], [r["run_id"] for r in rs], predictions)
        rows.append({"data": key[0], "series": key[1], "experiment": tag(rs[0], "experiment"), "k": k,
                     **A.interval_columns(est, "acc"), "seeds": len(rs), "run_id": ids_text(rs)})
        where = f"{key[1]}" + (f" K={k}" if k is not None else "") + f" ({key[0]})"
        used += [{"section": "fig2", "row": f"{where} seed {seed_of(r)}", "run_id": r["run_id"]}
                 for r in rs]
    df = pd.DataFrame(rows, columns=["data", "series", "experiment", "k", "acc", "acc lo", "acc hi", "seeds",
                                     "run_id"])
    df["k"] = df["k"].astype("Int64")
    df["seeds"] = df["seeds"].astype("Int64")
    return _finish(df, skipped, notes, used, groups=groups)


# ----------------------------------------------------------------------------------------------------------
# Figure 4: transfer matrices


def transfer_matrix(runs: pd.DataFrame, axis: str = "modality") -> pd.DataFrame:
    """Cross-modality (``axis="modality"``, recipe ``cross_modality``) or cross-task (``"question_type"``,
    recipe ``cross_task``) transfer: rows = training source (tag ``source``), columns = test group, cell =
    test accuracy on that group. ``attrs["chance"]`` is the median overall chance of the runs used (the
    heatmap's colour centre)."""
    if axis not in TRANSFER_AXES:
        raise ValueError(f"axis must be one of {sorted(TRANSFER_AXES)}, got {axis!r}")
    exp, prefix, known, col_title = TRANSFER_AXES[axis]
    sources = MODALITIES if axis == "modality" else QUESTION_TYPES
    section = "fig4"
    skipped: list = []
    notes: list = []
    used: list = []
    keep = []
    for r in eval_records(runs, section, skipped, experiments=[exp]):
        src_axis = tag(r, "source_axis")
        if src_axis is not None and src_axis != axis:
            skipped.append(skip(r, section, f"source_axis tag is {src_axis!r}, recipe {exp} expects {axis!r}"))
        elif tag(r, "source") is None:
            skipped.append(skip(r, section, "no source tag"))
        elif not group_metrics(r, prefix, known):
            skipped.append(skip(r, section, f"no {prefix}* metrics"))
        else:
            r["_src"] = canonical_group(tag(r, "source"), sources)
            r["_data"] = tag(r, "data") or "?"
            keep.append(r)
    by_sweep = latest_by(keep, lambda r: ((r["_data"], r["_src"]), sweep_rest(r, (*LABEL_TAGS, "source_axis"))),
                         "Figure 4", notes, describe=lambda k: f"source {k[0][1]} on {k[0][0]} ({exp})")
    chosen = one_sweep(by_sweep, "Figure 4", notes, describe=lambda k: f"source {k[1]} on {k[0]} ({exp})")
    several = len({k[0] for k in chosen}) > 1
    cols = ordered({g for rs in chosen.values() for r in rs for g in group_metrics(r, prefix, known)}, known)
    src_order = ordered({k[1] for k in chosen}, sources)
    index, rows, n_seeds = [], [], []
    for key in sorted(chosen, key=lambda k: (k[0], src_order.index(k[1]))):
        rs = chosen[key]
        gs = [group_metrics(r, prefix, known) for r in rs]
        index.append(f"{key[1]} ({key[0]})" if several else key[1])
        rows.append([_mean([g.get(c, math.nan) for g in gs]) for c in cols])
        n_seeds.append(len(rs))
        used += [{"section": f"fig4 {axis}", "row": f"{index[-1]} seed {seed_of(r)}", "run_id": r["run_id"]} for r in rs]
    df = pd.DataFrame(rows, index=pd.Index(index, name="train source", dtype=object),
                      columns=pd.Index(cols, name=col_title, dtype=object), dtype=float)
    if n_seeds and max(n_seeds) > 1:
        notes.append(f"Figure 4 ({axis}): cells are means over {min(n_seeds)}–{max(n_seeds)} seeds per source.")
    chances = [metric(r, "test/chance") for rs in chosen.values() for r in rs
               if not math.isnan(metric(r, "test/chance"))]
    return _finish(df, skipped, notes, used, chance=float(np.median(chances)) if chances else None,
                   groups=dict(chosen))


# ----------------------------------------------------------------------------------------------------------
# Figure 5: error transitions


def transitions(baseline: pd.DataFrame | Sequence[Mapping], compare: pd.DataFrame | Sequence[Mapping]) -> pd.DataFrame:
    """Per-modality counts of correct->correct, wrong->correct, correct->wrong, wrong->wrong from the
    baseline's to the compared run's predictions, joined on ``id`` (plus an ``All`` row and ``n``).

    A ``None`` prediction is wrong. Ids present in only one file, or whose gold answers disagree, are left
    out and counted in ``attrs["notes"]``.
    """
    b, c = pd.DataFrame(baseline), pd.DataFrame(compare)
    need = {"id", "pred", "gold", "modality"}
    for name, df in (("baseline", b), ("compare", c)):
        if not need <= set(df.columns):
            raise ValueError(f"{name} predictions lack columns {sorted(need - set(df.columns))}")
    notes: list[str] = []
    for name, df in (("baseline", b), ("compare", c)):
        dup = int(df["id"].duplicated().sum())
        if dup:
            notes.append(f"Figure 5: {dup} duplicate ids in the {name} predictions; kept the first of each.")
    b = b.drop_duplicates("id")
    c = c.drop_duplicates("id")
    m = b.merge(c[["id", "pred", "gold"]], on="id", how="inner", suffixes=("_b", "_c"))
    only_b, only_c = len(b) - len(m), len(c) - len(m)
    if only_b or only_c:
        notes.append(f"Figure 5: {only_b} baseline and {only_c} compared predictions have no partner id; "
                     "left out.")
    same_gold = m["gold_b"].astype(str) == m["gold_c"].astype(str)
    if not same_gold.all():
        notes.append(f"Figure 5: {int((~same_gold).sum())} joined ids have different gold answers; left out.")
        m = m[same_gold]

    def correct(pred: pd.Series, gold: pd.Series) -> list[bool]:
        return [p is not None and not (isinstance(p, float) and math.isnan(p)) and str(p) == str(g)
                for p, g in zip(pred, gold, strict=True)]

    m = m.assign(_b=correct(m["pred_b"], m["gold_b"]), _c=correct(m["pred_c"], m["gold_b"]),
                 _mod=[canonical_group(str(x), MODALITIES) for x in m["modality"]])
    rows, index = [], []
    for mod in ordered(set(m["_mod"]), MODALITIES):
        sub = m[m["_mod"] == mod]
        index.append(mod)
        rows.append({"n": len(sub), **error_transitions(sub["_b"].tolist(), sub["_c"].tolist())})
    index.append("All")
    rows.append({"n": len(m), **error_transitions(m["_b"].tolist(), m["_c"].tolist())})
    df = pd.DataFrame(rows, index=pd.Index(index, name="modality", dtype=object), columns=["n", *TRANSITIONS])
    return _finish(df.astype(int), [], notes, [])


def resolve_run(runs: pd.DataFrame, spec: str) -> tuple[dict[str, Any] | None, str]:
    """The run a ``--baseline``/``--compare`` value names: a run id, a unique run-id prefix (>= 6 characters),
    a run name (the latest such run), or a recipe name (its run with the best ``test/acc``).
    Returns ``(run record, how it was chosen)`` or ``(None, why not)``."""
    recs = _rows(runs)
    exact = [r for r in recs if r["run_id"] == spec]
    if exact:
        return exact[0], f"run {spec[:8]}"
    if len(spec) >= 6:
        pre = [r for r in recs if r["run_id"].startswith(spec)]
        if len(pre) == 1:
            return pre[0], f"run {pre[0]['run_id'][:8]}"
        if len(pre) > 1:
            return None, f"run-id prefix {spec!r} matches {len(pre)} runs"
    named = [r for r in recs if r.get("run_name") == spec]
    if named:
        return named[-1], f"latest run named {spec!r} ({named[-1]['run_id'][:8]})"
    return best_run(runs, [spec])


def best_run(runs: pd.DataFrame, experiments: Sequence[str], data: str | None = None
             ) -> tuple[dict[str, Any] | None, str]:
    """The run with the highest ``test/acc`` among ``experiments`` (on ``data`` when given)."""
    recs = [r for r in _rows(runs) if tag(r, "experiment") in experiments and not math.isnan(metric(r, "test/acc"))
            and (data is None or tag(r, "data") == data)]
    what = " / ".join(experiments) + (f" on {data}" if data else "")
    if not recs:
        return None, f"no finished top-level run of {what} with test/acc"
    r = max(recs, key=lambda r: (metric(r, "test/acc"), str(r.get("start_time"))))
    return r, f"best test/acc of {len(recs)} {what} run(s): {r['run_id'][:8]} ({100 * metric(r, 'test/acc'):.2f}%)"


# ----------------------------------------------------------------------------------------------------------
# The original per-question-type table (README), kept as it was


def qtype_table(runs: pd.DataFrame, label: str = "tags.experiment") -> str:
    """Markdown: one row per run — overall and per-question-type test accuracy, then chance / majority rows."""
    if runs.empty:
        return "_no finished runs_"
    cols = ["overall"] + list(QUESTION_TYPES)
    keys = ["test/acc"] + [f"test/acc/qtype/{metric_key(q)}" for q in QUESTION_TYPES]
    lines = ["| run | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]

    def fmt(v) -> str:
        return "–" if v is None or pd.isna(v) else f"{100 * float(v):.1f}"

    for _, r in runs.iterrows():
        lines.append(f"| {r.get(label, r['run_id'][:8])} | " + " | ".join(fmt(r.get(f"metrics.{k}")) for k in keys)
                     + " |")
    first = runs.iloc[0]
    for base in ("chance", "majority"):
        bkeys = [f"test/{base}"] + [f"test/{base}/qtype/{metric_key(q)}" for q in QUESTION_TYPES]
        lines.append(f"| _{base}_ | " + " | ".join(fmt(first.get(f"metrics.{k}")) for k in bkeys) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ap.add_argument("--experiment", default="medgr2", help="MLflow experiment name")
    ap.add_argument("--tag", default=None, help="filter: TAG=V1,V2 (e.g. experiment=sft_raw,sft_think)")
    ap.add_argument("--stage", default=None, help="only runs of this stage (e.g. sft)")
    args = ap.parse_args(argv)
    tag_, values = (args.tag.split("=", 1)[0], args.tag.split("=", 1)[1].split(",")) if args.tag else (None, None)
    print(qtype_table(load_runs(args.tracking_uri, args.experiment, tag_, values, args.stage)))


if __name__ == "__main__":
    main()
