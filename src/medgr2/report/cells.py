"""Which runs fill one cell of a table: the seeds of a row, the latest run of a seed, one sweep setting, the row label.

Runs of one recipe with the same sweep keys (tag ``sweep``) are one cell; its seeds are averaged
(:mod:`medgr2.report.aggregate`); several finished runs of one seed -> the latest is used and a note says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from medgr2.report import aggregate as A
from medgr2.report.run_rows import records, seed_of, sweep_of, tag

# Tags that tell runs of the same recipe apart in a row label, in this order.
LABEL_TAGS = ("k", "source", "select_method", "grpo", "stage", "data", "model")

# Row order of recipes in tables (unknown recipes come after, alphabetically).
EXPERIMENT_ORDER = ("zero_shot", "sft_raw", "sft_think", "sft_rewarded", "rand_all", "randk", "topk",
                    "topk_grpo", "topk_grpo_match", "topk_grpo_match_train", "grpo", "default", "cross_modality", "cross_task")


def experiment_rank(name: str | None) -> tuple[int, str]:
    """Sort key putting recipes in :data:`EXPERIMENT_ORDER`, unknown ones after."""
    name = name or ""
    return (EXPERIMENT_ORDER.index(name) if name in EXPERIMENT_ORDER else len(EXPERIMENT_ORDER), name)


def row_labels(runs: pd.DataFrame, exclude: Sequence[str] = ()) -> pd.Series:
    """Human-readable row label per run.

    The ``policy`` tag when set; otherwise the recipe name plus the tags (:data:`LABEL_TAGS`, minus
    ``exclude``) whose values differ between runs of the same recipe, e.g. ``randk k=1000``; either way plus the
    other sweep keys (tag ``sweep``) when they differ within the recipe. The seed never splits a row.
    """
    if runs.empty:
        return pd.Series([], dtype=object, index=runs.index)
    recs = records(runs)
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


def _when(row: Mapping[str, Any]) -> str:
    t = row.get("start_time")
    return "?" if t is None or pd.isna(t) else pd.Timestamp(t).strftime("%Y-%m-%d %H:%M:%S")


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


def seeds_text(runs: Sequence[Mapping[str, Any]]) -> str:
    """``"0, 1, 2"``: the seeds of a cell's runs."""
    return A.seed_label([seed_of(r) for r in runs])


def ids_text(runs: Sequence[Mapping[str, Any]]) -> str:
    """The cell's run ids, comma-separated (one id for one seed)."""
    return ",".join(r["run_id"] for r in runs)
