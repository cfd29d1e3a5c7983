"""R_φ's held-out scores per grade as a figure: does the reward model order the four grades (and the
wrong-letter probes) the way the paper's grading says it should?

The report runs no model: ``python -m medgr2.pipeline.reward_scores --model <R_φ export> --out reports/``
scores the held-out D_grade rows and saves ``reward_scores.csv``; then
``python -m medgr2.report.reward_figure --scores reports/reward_scores.csv`` draws ``reward_scores.png`` (box
plot per grade, true grade marked) beside it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

# Box order: the paper's four grades from best to worst, then the hard negatives.
GRADE_ORDER = ("original", "synonym", "deletion", "irrelevant", "wrong_letter", "image_swap")
PROBES = ("wrong_letter", "image_swap")


def _probe_accuracy(df: pd.DataFrame, probe_grade: str) -> float | None:
    """Share of records whose original outscores its ``probe_grade`` row (None without such rows)."""
    from medgr2.evaluation.reward_metrics import pairwise_accuracy

    by_record = df.assign(record=df["id"].str.split("#").str[0])
    orig = by_record[by_record["grade"] == "original"].set_index("record")["score"]
    probe = by_record[by_record["grade"] == probe_grade].set_index("record")["score"]
    both = orig.index.intersection(probe.index)
    return pairwise_accuracy(orig.loc[both].tolist(), probe.loc[both].tolist()) if len(both) else None


def summary(df: pd.DataFrame) -> tuple[float, float | None, float | None]:
    """(Spearman of score vs the four grades' targets, share of records whose original outscores its
    wrong-letter probe, and its image-swap probe — None without such probes). Items pair by the record id
    before ``#``."""
    from medgr2.evaluation.reward_metrics import spearman

    graded = df[~df["grade"].isin(PROBES)]
    rho = spearman(graded["score"].tolist(), graded["target"].tolist())
    return rho, _probe_accuracy(df, "wrong_letter"), _probe_accuracy(df, "image_swap")


def plot(df: pd.DataFrame, out: Path, title: str = "R_φ held-out scores per grade") -> Path:
    """Box plot of ``df.score`` per grade with each grade's target value marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grades = [g for g in GRADE_ORDER if g in set(df["grade"])]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot([df.loc[df["grade"] == g, "score"] for g in grades], showfliers=False)
    ax.set_xticks(range(1, len(grades) + 1), [f"{g}\n(n={int((df['grade'] == g).sum())})" for g in grades])
    for i, g in enumerate(grades, start=1):
        t = df.loc[df["grade"] == g, "target"].dropna()
        if len(t):
            ax.plot([i - 0.3, i + 0.3], [t.iloc[0]] * 2, color="tab:red", linewidth=2,
                    label="paper's grade" if i == 1 else None)
    ax.set_ylabel("R_φ score")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=140)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: a saved ``reward_scores.csv`` in, ``reward_scores.png`` beside it (or in ``--out``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scores", required=True, help="reward_scores.csv (python -m medgr2.pipeline.reward_scores)")
    ap.add_argument("--out", default=None, help="output folder (default: the CSV's folder)")
    args = ap.parse_args(argv)
    scores = Path(args.scores)
    if not scores.is_file():
        raise SystemExit(f"error: --scores {scores} is not a file; write it with "
                         "python -m medgr2.pipeline.reward_scores --model <R_φ export> --out <folder>")
    df = pd.read_csv(scores)
    missing = {"id", "grade", "target", "score"} - set(df.columns)
    if missing:
        raise SystemExit(f"error: {scores} lacks the columns {sorted(missing)}")
    rho, pair, image_pair = summary(df)
    title = (f"R_φ held-out: Spearman {rho:.3f}" + (f", correct > wrong letter {pair:.2f}" if pair is not None else "")
             + (f", own > other image {image_pair:.2f}" if image_pair is not None else ""))
    print(plot(df, Path(args.out or scores.parent) / "reward_scores.png", title))
    print(title)


if __name__ == "__main__":
    main()
