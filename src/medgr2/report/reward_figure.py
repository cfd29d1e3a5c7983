"""R_φ's held-out scores per grade as a figure: does the reward model order the four grades (and the
wrong-letter probes) the way the paper's grading says it should?

``python -m medgr2.report.reward_figure --model <R_φ export> [overrides...]`` rebuilds the held-out split of
D_grade exactly as ``stage=reward`` made it (same source split, same probes), scores it with the export and
writes ``reward_scores.png`` (box plot per grade, true grade marked) and ``reward_scores.csv`` (one row per item).
Trailing arguments are Hydra overrides for the config that built the model (default: the repo's defaults).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

# Box order: the paper's four grades from best to worst, then the hard negatives.
GRADE_ORDER = ("original", "synonym", "deletion", "irrelevant", "wrong_letter")


def held_out_scores(cfg, model: str | Path) -> pd.DataFrame:
    """Scores of R_φ ``model`` on the held-out D_grade rows (+ wrong-letter probes) for config ``cfg``."""
    from medgr2.data.grading import GRADES
    from medgr2.modules.reward import RewardScorer
    from medgr2.pipeline.reward import build_grade_dataset, split_by_source, wrong_letter_probes

    r = cfg.stage
    rows, _ = build_grade_dataset(cfg, r)
    _, val_idx = split_by_source(rows["source_id"], float(r.val_fraction), int(cfg.seed), r.get("max_val_sources"))
    val = [v for v in rows.select(val_idx).to_list() if v["grade"] in GRADES]
    items = val + wrong_letter_probes(val, int(r.grading.seed))
    scores = RewardScorer(model, batch_size=int(r.eval_batch_size)).score(items)
    return pd.DataFrame({"id": [i["id"] for i in items], "grade": [i["grade"] for i in items],
                         "target": [float(i["target"]) for i in items], "score": scores})


def summary(df: pd.DataFrame) -> tuple[float, float | None]:
    """(Spearman of score vs the four grades' targets, share of records whose original outscores its
    wrong-letter probe — None without probes). Items pair by the record id before ``#``."""
    from medgr2.evaluation.reward_metrics import pairwise_accuracy, spearman

    graded = df[df["grade"] != "wrong_letter"]
    rho = spearman(graded["score"].tolist(), graded["target"].tolist())
    by_record = df.assign(record=df["id"].str.split("#").str[0])
    orig = by_record[by_record["grade"] == "original"].set_index("record")["score"]
    probe = by_record[by_record["grade"] == "wrong_letter"].set_index("record")["score"]
    both = orig.index.intersection(probe.index)
    pair = pairwise_accuracy(orig.loc[both].tolist(), probe.loc[both].tolist()) if len(both) else None
    return rho, pair


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
    from hydra import compose, initialize_config_dir

    import medgr2  # noqa: F401  (registers resolvers)
    from medgr2.pipeline.reward import CONF_DIR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an R_φ export folder (stage=reward output)")
    ap.add_argument("--out", default="reports", help="output folder")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the config that trained the model")
    args = ap.parse_args(argv)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["stage=reward", "paths.output_dir=.", *args.overrides])
    df = held_out_scores(cfg, args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "reward_scores.csv", index=False)
    rho, pair = summary(df)
    title = f"R_φ held-out: Spearman {rho:.3f}" + (f", correct > wrong letter {pair:.2f}" if pair is not None else "")
    print(plot(df, out / "reward_scores.png", title))
    print(title)


if __name__ == "__main__":
    main()
