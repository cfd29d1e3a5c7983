"""The reward-hacking figure of a GRPO arm: the R_φ term and rollout accuracy over GRPO steps, from the MLflow
metric history of the arm's GRPO runs (one line per arm, mean over its runs — seeds, sources — with a band of
± one standard deviation across them).

Reward hacking shows as the R_φ term rising while accuracy stays or falls: R_φ pays for something other than the
right answer (docs/rl_generalization.md). Where they were logged the figure adds R_φ's accuracy at ranking the
batch's right vs wrong rollouts of one prompt (``train/rm_pair_acc``) and the share of informative groups
(``train/informative_frac``). A table gives each arm's change of every series from its first to its last fifth
of steps.

    python -m medgr2.report.hacking_figure --tracking-uri sqlite:///mlflow.db --out reports/ [--arm cross_modality_grpo]
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

# (panel title, metric keys in order of preference): the R_φ term is R_φ's raw score when logged (it stays
# meaningful when rm_normalize z-scores the term the loss sees), else the term as used.
SERIES = (
    ("R_φ term", ("train/reward_rm_raw", "train/reward_rm")),
    ("rollout accuracy", ("train/accuracy",)),
    ("R_φ right-vs-wrong ranking accuracy", ("train/rm_pair_acc",)),
    ("informative groups", ("train/informative_frac",)),
)
GRPO_STAGE = "grpo"


def grpo_runs(tracking_uri: str, experiment: str = "medgr2", arms: Sequence[str] | None = None) -> pd.DataFrame:
    """Finished GRPO runs (``tags.stage == grpo``: a loop's GRPO step or ``stage=grpo`` alone) with their arm
    (tag ``experiment``, ``default`` when absent; runs with extra sweep keys, an option such as
    ``stage.grpo.difficulty_filter=true``, are the arm ``"<experiment> [<keys>]"`` as in the rlgen tables), seed
    and source tags. ``arms`` selects by recipe (tag ``experiment``)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=f"tags.stage = '{GRPO_STAGE}'",
                              output_format="pandas")
    cols = ["run_id", "arm", "seed", "source"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    runs = runs[runs["status"] == "FINISHED"]
    recipe = runs.get("tags.experiment", pd.Series("default", index=runs.index)).fillna("default")
    rest = runs.get("tags.sweep", pd.Series("", index=runs.index)).fillna("").map(_option_keys)
    out = pd.DataFrame({"run_id": runs["run_id"], "recipe": recipe,
                        "arm": [f"{a} [{o}]" if o else a for a, o in zip(recipe, rest, strict=True)],
                        "seed": runs.get("tags.seed", pd.Series("?", index=runs.index)).fillna("?"),
                        "source": runs.get("tags.source", pd.Series("", index=runs.index)).fillna("")})
    if arms:
        out = out[out["recipe"].isin(list(arms))]
    return out.drop(columns="recipe").reset_index(drop=True)


def _option_keys(sweep: str) -> str:
    """The sweep keys that make an option of a recipe (not the source, seed or the table's label keys)."""
    from medgr2.report.cells import LABEL_TAGS

    return " ".join(i for i in sweep.split() if i.partition("=")[0] not in (*LABEL_TAGS, "source_axis"))


def file_label(arm: str) -> str:
    """``arm`` as a file-name part: ``cross_modality_grpo [stage.x=true]`` -> ``cross_modality_grpo_stage.x=true``."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", arm).strip("_")


def metric_histories(tracking_uri: str, run_ids: Sequence[str]) -> pd.DataFrame:
    """Long frame ``run_id, series, key, step, value`` of every :data:`SERIES` metric the runs logged (for
    each series the first key of its preference list that the run has)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    rows = []
    for rid in run_ids:
        for series, keys in SERIES:
            for key in keys:
                hist = client.get_metric_history(rid, key)
                if hist:
                    rows += [(rid, series, key, int(m.step), float(m.value)) for m in hist]
                    break
    return pd.DataFrame(rows, columns=["run_id", "series", "key", "step", "value"])


def band(hist: pd.DataFrame, window: int = 10) -> pd.DataFrame:
    """Per step: the mean over runs of each run's rolling mean (``window`` steps), ± one std across runs.

    ``hist`` holds one series (``run_id, step, value``). Returns ``step, mean, lo, hi, runs``."""
    if hist.empty:
        return pd.DataFrame(columns=["step", "mean", "lo", "hi", "runs"])
    wide = hist.pivot_table(index="step", columns="run_id", values="value", aggfunc="last").sort_index()
    smooth = wide.rolling(max(1, int(window)), min_periods=1).mean()
    mean = smooth.mean(axis=1)
    std = smooth.std(axis=1, ddof=1).fillna(0.0)
    return pd.DataFrame({"step": smooth.index.to_numpy(), "mean": mean.to_numpy(), "lo": (mean - std).to_numpy(),
                         "hi": (mean + std).to_numpy(), "runs": smooth.notna().sum(axis=1).to_numpy()})


def drift(hist: pd.DataFrame, fraction: float = 0.2) -> tuple[float, float, float]:
    """``(first, last, last - first)``: the mean over runs of each run's mean over its first / last
    ``fraction`` of logged steps (at least one step each)."""
    firsts, lasts = [], []
    for _, h in hist.sort_values("step").groupby("run_id"):
        k = max(1, int(math.ceil(fraction * len(h))))
        firsts.append(float(h["value"].iloc[:k].mean()))
        lasts.append(float(h["value"].iloc[-k:].mean()))
    if not firsts:
        return math.nan, math.nan, math.nan
    a, b = float(np.mean(firsts)), float(np.mean(lasts))
    return a, b, b - a


def summary_table(histories: dict[str, pd.DataFrame], runs: pd.DataFrame) -> pd.DataFrame:
    """One row per arm and series: runs, first-fifth mean, last-fifth mean, change, the metric key used."""
    rows = []
    for arm, hist in histories.items():
        n = int((runs["arm"] == arm).sum())
        for series, _ in SERIES:
            h = hist[hist["series"] == series]
            if h.empty:
                continue
            first, last, delta = drift(h)
            rows.append({"arm": arm, "series": series, "key": h["key"].iloc[0], "runs": n, "first": first,
                         "last": last, "change": delta})
    return pd.DataFrame(rows, columns=["arm", "series", "key", "runs", "first", "last", "change"])


def plot(hist: pd.DataFrame, arm: str, n_runs: int, window: int = 10):
    """One figure for an arm: a panel per logged series, mean line with its ± std band over steps."""
    from matplotlib.figure import Figure

    present = [(s, keys) for s, keys in SERIES if (hist["series"] == s).any()]
    fig = Figure(figsize=(4.2 * max(len(present), 1), 3.4), layout="constrained")
    if not present:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, f"{arm}: no GRPO metric history", ha="center", va="center")
        ax.set_axis_off()
        return fig
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    for ax, (series, _) in zip(axes, present, strict=True):
        h = hist[hist["series"] == series]
        b = band(h[["run_id", "step", "value"]], window)
        ax.plot(b["step"], b["mean"], color="tab:blue", marker="o" if len(b) < 20 else None)  # few steps: visible
        ax.fill_between(b["step"].astype(float), b["lo"].astype(float), b["hi"].astype(float), alpha=0.25,
                        color="tab:blue")
        ax.set_title(f"{series}\n({h['key'].iloc[0]})", fontsize=9)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{arm}: {n_runs} GRPO run(s), rolling mean over {window} steps ± std across runs", fontsize=10)
    return fig


def hacking_figures(tracking_uri: str, out: str | Path, experiment: str = "medgr2",
                    arms: Sequence[str] | None = None, window: int = 10) -> tuple[dict[str, Path], pd.DataFrame]:
    """Write ``hacking_<arm>.png`` for every GRPO arm in the store (or ``arms``) and return the files and the
    :func:`summary_table`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = grpo_runs(tracking_uri, experiment, arms)
    files: dict[str, Path] = {}
    histories: dict[str, pd.DataFrame] = {}
    for arm, group in runs.groupby("arm", sort=True):
        hist = metric_histories(tracking_uri, group["run_id"].tolist())
        histories[str(arm)] = hist
        fig = plot(hist, str(arm), len(group), window)
        path = out / f"hacking_{file_label(str(arm))}.png"
        fig.savefig(path, dpi=120)
        files[str(arm)] = path
    return files, summary_table(histories, runs)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medgr2.report.hacking_figure``: the figures and ``hacking_summary.csv`` into ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ap.add_argument("--experiment", default="medgr2")
    ap.add_argument("--out", default="reports")
    ap.add_argument("--arm", action="append", help="recipe (tag experiment) to draw; repeat; default: every GRPO arm")
    ap.add_argument("--window", type=int, default=10, help="rolling-mean window in steps")
    args = ap.parse_args(argv)
    files, table = hacking_figures(args.tracking_uri, args.out, args.experiment, args.arm, args.window)
    table.to_csv(Path(args.out) / "hacking_summary.csv", index=False)
    for arm, path in files.items():
        print(f"{arm}: {path}")
    if not files:
        print("no finished GRPO runs in the store")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
