"""The paper's Tables 1 and 2 (and the per-question-type table) from a runs ``DataFrame``.

Each builder is a pure function of the runs of :func:`medgr2.report.mlflow_runs.load_runs` and returns a
``DataFrame`` whose ``attrs`` list the skipped runs, notes and runs used (:func:`medgr2.report.run_rows.finish`).
Accuracies stay fractions in [0, 1] here and in the CSV files; the Markdown and LaTeX renderers print percent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from medgr2.data.schema import MODALITIES, QUESTION_TYPES
from medgr2.evaluation.metrics import chance_accuracy, metric_key
from medgr2.report import aggregate as A
from medgr2.report.aggregate import PredictionCache
from medgr2.report.cells import experiment_rank, ids_text, latest_by, one_sweep, row_labels, sweep_rest
from medgr2.report.run_rows import (
    as_int,
    canonical_group,
    eval_records,
    finish,
    group_metrics,
    mean_known,
    metric,
    ordered,
    seed_of,
    tag,
)

# Table 2 rows: (row label, recipes in order of preference). "+GRPO" is the full pipeline (recipe ``grpo``:
# GRPO on the rewarded SFT policy); only when there is no such run, the TopK+GRPO run with the largest K.
TABLE2_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("zero_shot",)),
    ("SFT raw", ("sft_raw",)),
    ("SFT rewarded", ("sft_rewarded",)),
    ("+GRPO", ("grpo", "topk_grpo")),
)
TABLE2_METRICS = (("Acc", "test/acc"), ("F1", "test/f1"), ("AUC", "test/auc"))


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
        return finish(pd.DataFrame(columns=["policy", "data", "Overall", "run_id"]), skipped, notes, used)
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
        cells = {m: mean_known([g.get(m, math.nan) for g in per_row[k]]) for m in mods}
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
    return finish(df, skipped, notes, used)


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
    return finish(table, skipped, notes, used, missing=missing, groups=groups)


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
