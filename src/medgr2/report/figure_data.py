"""The data behind Figures 2, 4 and 5 of the paper, from a runs ``DataFrame`` (or two predictions files).

Pure functions like :mod:`medgr2.report.tables`: each returns a ``DataFrame`` whose ``attrs`` list the skipped
runs, notes and runs used; :mod:`medgr2.report.figures` draws them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medgr2.data.schema import MODALITIES, QUESTION_TYPES
from medgr2.evaluation.metrics import error_transitions
from medgr2.report import aggregate as A
from medgr2.report.aggregate import PredictionCache
from medgr2.report.cells import LABEL_TAGS, ids_text, latest_by, one_sweep, sweep_rest
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
    skip,
    tag,
)

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
    return finish(df, skipped, notes, used, groups=groups)


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
        rows.append([mean_known([g.get(c, math.nan) for g in gs]) for c in cols])
        n_seeds.append(len(rs))
        used += [{"section": f"fig4 {axis}", "row": f"{index[-1]} seed {seed_of(r)}", "run_id": r["run_id"]} for r in rs]
    df = pd.DataFrame(rows, index=pd.Index(index, name="train source", dtype=object),
                      columns=pd.Index(cols, name=col_title, dtype=object), dtype=float)
    if n_seeds and max(n_seeds) > 1:
        notes.append(f"Figure 4 ({axis}): cells are means over {min(n_seeds)}–{max(n_seeds)} seeds per source.")
    chances = [metric(r, "test/chance") for rs in chosen.values() for r in rs
               if not math.isnan(metric(r, "test/chance"))]
    return finish(df, skipped, notes, used, chance=float(np.median(chances)) if chances else None,
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
    return finish(df.astype(int), [], notes, [])
