"""Read finished runs back from MLflow and render accuracy tables (Markdown) beside their baselines.

The report reads MLflow and never trains. ``python -m medgr2.report.tables --tag experiment=sft_raw,sft_think``
prints one row per run: overall test accuracy and per question type, each with chance and majority.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pandas as pd

from medgr2.data.schema import QUESTION_TYPES
from medgr2.evaluation.metrics import metric_key


def load_runs(tracking_uri: str, experiment: str = "medgr2", tag: str | None = None,
              values: Sequence[str] | None = None, stage: str | None = None) -> pd.DataFrame:
    """Finished runs of ``experiment`` (optionally where ``tags.<tag>`` is one of ``values``)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="attributes.status = 'FINISHED'")
    if runs.empty:
        return runs
    if stage:
        runs = runs[runs["tags.stage"] == stage]
    if tag and values:
        runs = runs[runs[f"tags.{tag}"].isin(list(values))]
    return runs.reset_index(drop=True)


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
    tag, values = (args.tag.split("=", 1)[0], args.tag.split("=", 1)[1].split(",")) if args.tag else (None, None)
    print(qtype_table(load_runs(args.tracking_uri, args.experiment, tag, values, args.stage)))


if __name__ == "__main__":
    main()
