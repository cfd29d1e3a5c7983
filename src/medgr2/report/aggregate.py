"""Seeds of one recipe as one cell: per-question correctness from saved predictions, mean ± 95% CI.

A *group* is every finished top-level run of one recipe (tag ``experiment``) with the same sweep keys (tag
``sweep``, or the label tags of older runs) on one data set; its runs differ only in ``seed``. Within a
seed the latest run counts (a rerun replaces an earlier one). A cell's interval comes from
:mod:`medgr2.report.significance`: the question part from the runs' ``predictions.jsonl`` (bootstrap over
the test questions the seeds share), the seed part from the spread of their accuracies. Without predictions
the question part is unknown and only the seed spread is used (none for one seed: the cell has no interval).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medgr2.report import significance as S

log = logging.getLogger(__name__)

Predictions = Callable[[str], "pd.DataFrame | None"]


def is_correct(pred: Any, gold: Any) -> bool:
    """A prediction is right when it equals the gold letter; ``None``/NaN (unparseable) is wrong."""
    if pred is None or (isinstance(pred, float) and math.isnan(pred)):
        return False
    return str(pred) == str(gold)


def correct_by_id(predictions: pd.DataFrame) -> pd.Series:
    """``id -> 0/1`` correctness of one run's predictions (first row of a duplicated id)."""
    if predictions is None or predictions.empty or not {"id", "pred", "gold"} <= set(predictions.columns):
        raise ValueError("predictions need the columns id, pred, gold")
    df = predictions.drop_duplicates("id")
    return pd.Series([float(is_correct(p, g)) for p, g in zip(df["pred"], df["gold"], strict=True)],
                     index=df["id"].astype(str).to_numpy(), dtype=float)


def correctness_matrix(series: Sequence[pd.Series]) -> tuple[np.ndarray, list[str]]:
    """``seeds x questions`` on the ids every run answered (sorted), and those ids."""
    common = sorted(set.intersection(*(set(s.index) for s in series))) if series else []
    return np.stack([s.loc[common].to_numpy(dtype=float) for s in series]) if common else np.zeros((0, 0)), common


class PredictionCache:
    """Read each run's ``predictions.jsonl`` once; ``None`` for a run without a readable one (remembered in
    ``missing`` with the reason)."""

    def __init__(self, read: Callable[[str], pd.DataFrame]):
        self._read = read
        self._cache: dict[str, pd.Series | None] = {}
        self._modality: dict[str, dict[str, str]] = {}
        self.missing: dict[str, str] = {}

    def correct(self, run_id: str) -> pd.Series | None:
        """The run's per-question correctness, or ``None``."""
        if run_id not in self._cache:
            try:
                frame = self._read(run_id)
                self._cache[run_id] = correct_by_id(frame)
                if "modality" in frame:
                    self._modality[run_id] = dict(zip(frame["id"].astype(str), frame["modality"].astype(str),
                                                      strict=True))
            except Exception as exc:  # noqa: BLE001 - a missing or unreadable artifact only loses the interval part
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                self.missing[run_id] = first
                self._cache[run_id] = None
        return self._cache[run_id]


    def modality(self, run_id: str) -> dict[str, str] | None:
        """``id -> modality`` of the run's predictions (canonical names), or ``None``."""
        if self.correct(run_id) is None or run_id not in self._modality:
            return None
        from medgr2.data.schema import MODALITIES
        from medgr2.report.run_rows import canonical_group

        return {i: canonical_group(m, MODALITIES) for i, m in self._modality[run_id].items()}


def cell(values: Sequence[float], run_ids: Sequence[str], predictions: PredictionCache | None = None,
         use_questions: bool = True) -> S.Estimate:
    """Mean ± CI of one cell: ``values`` are the seeds' logged metric (their mean is the cell), ``run_ids``
    their runs. With ``use_questions`` (accuracy) and predictions for every run, the question part is the
    bootstrap over the shared questions; otherwise only the seed spread counts."""
    vals = [float(v) for v in values]
    if not vals:
        return S.Estimate(math.nan, math.nan, math.nan, 0, 0)
    series = [predictions.correct(r) for r in run_ids] if (predictions and use_questions) else []
    if series and all(s is not None for s in series):
        mat, ids = correctness_matrix(series)  # type: ignore[arg-type]
        if ids:
            se_q = float(np.std(S.bootstrap_means(mat.mean(axis=0)), ddof=1))
            return S.combine(float(np.mean(vals)), se_q, vals, len(ids))
    return S.combine(float(np.mean(vals)), math.nan, vals, 0)


def seed_label(seeds: Sequence[str]) -> str:
    """``"0, 1, 2"``; unknown seeds (runs logged before the ``seed`` tag) print as ``?``."""
    return ", ".join(seeds)


def interval_columns(est: S.Estimate, name: str) -> dict[str, float]:
    """``{name: mean, "<name> lo": lo, "<name> hi": hi}`` for a table row."""
    return {name: est.value, f"{name} lo": est.lo, f"{name} hi": est.hi}


def describe_method(predictions_used: bool) -> str:
    """One sentence for the report: how the intervals were computed."""
    base = ("Cells are the mean over seeds ± the half-width of a 95% interval that adds the spread across "
            "seeds (s²/n) to the uncertainty from the test questions (a bootstrap over the questions the "
            "seeds share, 2,000 resamples, fixed seed), referred to a t distribution with Welch–Satterthwaite "
            "degrees of freedom. '(1 seed)': the seed spread is not in the interval. F1 and AUC intervals "
            "are the seed spread alone (no question bootstrap): a policy the seed does not change, such as "
            "the base, shows ± 0.00 there, which is not a claim of no uncertainty.")
    if not predictions_used:
        base += " Runs without predictions.jsonl: seed spread only (no interval for one seed)."
    return base


def pairs(mapping: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Items sorted by seed (numeric seeds numerically)."""
    def key(s: str) -> tuple[int, float, str]:
        try:
            return (0, float(s), s)
        except ValueError:
            return (1, 0.0, s)

    return [(k, mapping[k]) for k in sorted(mapping, key=key)]
