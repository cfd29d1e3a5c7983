"""The two runs Figure 5 compares: a run named on the command line, or the best run of a recipe."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from medgr2.report.run_rows import metric, records, tag

# Figure 5's runs when none is named: the best of these recipes.
DEFAULT_BASELINE = ("sft_raw",)
DEFAULT_COMPARE = ("grpo", "topk_grpo")


def resolve_run(runs: pd.DataFrame, spec: str) -> tuple[dict[str, Any] | None, str]:
    """The run a ``--baseline``/``--compare`` value names: a run id, a unique run-id prefix (>= 6 characters),
    a run name (the latest such run), or a recipe name (its run with the best ``test/acc``).
    Returns ``(run record, how it was chosen)`` or ``(None, why not)``."""
    recs = records(runs)
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
    recs = [r for r in records(runs) if tag(r, "experiment") in experiments and not math.isnan(metric(r, "test/acc"))
            and (data is None or tag(r, "data") == data)]
    what = " / ".join(experiments) + (f" on {data}" if data else "")
    if not recs:
        return None, f"no finished top-level run of {what} with test/acc"
    r = max(recs, key=lambda r: (metric(r, "test/acc"), str(r.get("start_time"))))
    return r, f"best test/acc of {len(recs)} {what} run(s): {r['run_id'][:8]} ({100 * metric(r, 'test/acc'):.2f}%)"


def pick_pair(runs: pd.DataFrame, all_runs: pd.DataFrame | None = None, baseline: str | None = None,
              compare: str | None = None) -> tuple[dict | None, str, dict | None, str]:
    """Figure 5's two runs: ``(baseline, how, compare, how)``; a run is ``None`` when nothing matches (``how``
    then says why). Given specs are resolved by :func:`resolve_run` among ``runs``, then
    ``all_runs``; the defaults are the best ``grpo``/``topk_grpo`` run and the best ``sft_raw`` run on the
    same data set (any data set when there is none)."""

    def pick(spec: str | None, default: Sequence[str], data: str | None) -> tuple[dict | None, str]:
        if spec:
            run, how = resolve_run(runs, spec)
            if run is None and all_runs is not None:  # not among the filtered runs: any finished top-level run
                run, how = resolve_run(all_runs, spec)
            return run, how
        if data:
            run, how = best_run(runs, default, data=data)
            if run is not None:
                return run, how
        return best_run(runs, default)

    comp, how_c = pick(compare, DEFAULT_COMPARE, None)
    base, how_b = pick(baseline, DEFAULT_BASELINE, tag(comp, "data") if comp else None)
    return base, how_b, comp, how_c
