"""R_φ's scores on its held-out D_grade rows (+ wrong-letter probes), saved as ``reward_scores.csv``: the
artifact :mod:`medgr2.report.reward_figure` draws (the report reads it and never runs a model).

``python -m medgr2.pipeline.reward_scores --model <R_φ export> [--out reports/] [overrides...]`` rebuilds the
held-out split of D_grade exactly as ``stage=reward`` made it (same source split, same probes), scores it with
the export and writes ``<out>/reward_scores.csv`` (one row per item: id, grade, target, score). Trailing
arguments are Hydra overrides for the config that built the model (default: the repo's defaults).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

SCORES_FILE = "reward_scores.csv"
#: A source checkout's conf/ (this command rebuilds the config that trained the model; a wheel has no conf/).
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def held_out_scores(cfg: DictConfig, model: str | Path) -> pd.DataFrame:
    """Scores of R_φ ``model`` on the held-out D_grade rows (+ the wrong-letter and image-swap probes) for
    config ``cfg``: the held-out records its training held out (split with ``seeds.reward``)."""
    from medgr2.data.grade_config import GRADES
    from medgr2.data.grade_transforms import held_out_probes, split_by_source
    from medgr2.modules.reward_scorer import RewardScorer
    from medgr2.pipeline.common import product_seed
    from medgr2.pipeline.grade import build_grade_dataset

    r = cfg.stage
    rows, _ = build_grade_dataset(cfg, r)
    _, val_idx = split_by_source(rows["source_id"], float(r.val_fraction), product_seed(cfg, "reward"),
                                 r.get("max_val_sources"))
    val = [v for v in rows.select(val_idx).to_list() if v["grade"] in GRADES]
    items = val + held_out_probes(val, int(r.grading.seed))
    scores = RewardScorer(model, batch_size=int(r.eval_batch_size)).score(items)
    return pd.DataFrame({"id": [i["id"] for i in items], "grade": [i["grade"] for i in items],
                         "target": [float(i["target"]) for i in items], "score": scores})


def main(argv: Sequence[str] | None = None) -> Path:
    """The command line (see the module docstring); returns the CSV's path."""
    from hydra import compose, initialize_config_dir

    import medgr2  # noqa: F401  (registers resolvers)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an R_φ export folder (stage=reward output)")
    ap.add_argument("--out", default="reports", help="output folder")
    ap.add_argument("--config-dir", default=str(CONF_DIR), help="the project's conf/ folder")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the config that trained the model")
    args = ap.parse_args(argv)
    if not Path(args.config_dir, "train.yaml").exists():
        ap.error(f"no train.yaml in --config-dir {args.config_dir}: pass the project's conf/ folder")
    with initialize_config_dir(config_dir=str(Path(args.config_dir).resolve()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["stage=reward", "paths.output_dir=.", *args.overrides])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held_out_scores(cfg, args.model).to_csv(out / SCORES_FILE, index=False)
    print(out / SCORES_FILE)
    return out / SCORES_FILE


if __name__ == "__main__":
    main()
