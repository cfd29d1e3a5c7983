"""Write the MedGR2 report from MLflow: Tables 1-2 and Figures 2, 4, 5 of the paper, plus ``report.md``.

Reads finished top-level runs of one MLflow experiment and never trains. For each table it writes
``<name>.md``, ``<name>.csv`` (exact fractions) and ``<name>.tex`` (booktabs, percent); for each figure a PNG
and the CSV of its data; ``report.md`` embeds every table and links every figure. Runs that could have
contributed but could not (no ``test/acc``, no ``k`` tag, no predictions artifact, ...) are listed with the
reason under "Skipped runs"; runs of one row are its seeds (averaged, with a 95% interval); several runs of one
seed -> the latest is used and the report says so.

Sections:
  table1  accuracy per modality and overall, one row per policy, chance last
  table2  ablation base (zero_shot) / SFT raw (sft_raw) / SFT rewarded (sft_rewarded) / +GRPO (grpo, else
          topk_grpo with the largest K): Acc, F1, AUC per eval set (data tag, test split)
  fig2    test accuracy vs K for RandK / TopK / TopK+GRPO (recipes randk, topk, topk_grpo; tag k), Rand-all
          (rand_all) as a line
  fig4    transfer heatmaps: train source (tag source) x test question type (cross_task) or modality
          (cross_modality)
  fig5    error transitions baseline -> compare per modality, from their predictions.jsonl joined on id
  claims  the paper's claims as paired tests: difference, 95% CI, p-value, verdict
  rlgen   RQ3: SFT+GRPO minus SFT per cell of the cross-domain GRPO recipes, and each GRPO arm's reward-hacking
          figure (R_φ term and accuracy over steps; medgr2.report.rl_gain, hacking_figure)

Examples:
  python -m medgr2.report
  python -m medgr2.report --experiments randk,topk,topk_grpo,rand_all --only fig2 --out reports/k-sweep
  python -m medgr2.report --tag data=omnimedvqa --baseline sft_raw --compare 3f9c2a1b
  python -m medgr2.report --protocol medr1   # rescore saved predictions as Med-R1 does (first tag, exact letter)
  python -m medgr2.report --compare 'randk k=2000' 'topk k=2000'     # paired test B vs A, printed

Seeds: runs of one recipe with the same sweep keys (tag ``sweep``) are one cell; each cell is the mean over
its seeds ± a 95% interval (seed spread + test-question bootstrap), with the number of seeds. The ``claims``
section tests the paper's claims on the saved predictions (docs/statistics.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from medgr2.evaluation.protocols import PROTOCOLS
from medgr2.report import aggregate as A
from medgr2.report import claims as C
from medgr2.report import protocol as P
from medgr2.report.build import SECTIONS, build_report
from medgr2.report.mlflow_runs import filter_runs, load_runs


def parse_tags(items: Sequence[str] | None) -> dict[str, list[str]]:
    """``["data=synthmed", "k=1000,2000"]`` -> ``{"data": ["synthmed"], "k": ["1000", "2000"]}``."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, vals = item.partition("=")
        if not sep or not key or not vals:
            raise argparse.ArgumentTypeError(f"--tag wants KEY=V1,V2, got {item!r}")
        out.setdefault(key.strip(), []).extend(v.strip() for v in vals.split(",") if v.strip())
    return out


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m medgr2.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                    help="MLflow tracking URI (default: %(default)s)")
    ap.add_argument("--experiment", default="medgr2", help="MLflow experiment name (default: %(default)s)")
    ap.add_argument("--experiments", type=_csv, default=None, metavar="E1,E2",
                    help="only runs whose `experiment` tag (recipe) is one of these (default: all)")
    ap.add_argument("--tag", action="append", default=None, metavar="KEY=V1,V2",
                    help="only runs whose tag KEY is one of the values; repeatable (all must hold)")
    ap.add_argument("--out", default="reports", help="output folder (default: %(default)s)")
    ap.add_argument("--baseline", default=None, metavar="RUN_OR_EXPERIMENT",
                    help="Figure 5 baseline: run id (or prefix), run name, or recipe (its best test/acc run); "
                         "default: best sft_raw run")
    ap.add_argument("--compare", default=None, nargs="+", metavar="ARM",
                    help="one value: Figure 5's compared run, same forms as --baseline (default: best grpo / "
                         "topk_grpo run). Two values A B: print the paired comparison B vs A (accuracy "
                         "difference, paired-bootstrap CI, McNemar per seed, seed-matched test); an arm is a run "
                         "id or 'recipe key=value ...', e.g. --compare 'randk k=2000' 'topk k=2000'")
    ap.add_argument("--protocol", default=None, choices=PROTOCOLS,
                    help="rescore saved predictions under this protocol (default: as each run was scored)")
    ap.add_argument("--only", type=_csv, default=None, metavar=",".join(SECTIONS),
                    help="write only these sections (default: all)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    try:
        tags = parse_tags(args.tag)
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))
    if args.only and set(args.only) - set(SECTIONS):
        ap.error(f"--only: unknown sections {sorted(set(args.only) - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")
    compare = args.compare[0] if args.compare else None
    if args.compare and len(args.compare) > 2:
        ap.error(f"--compare takes one run (Figure 5) or two arms A B, got {len(args.compare)} values")
    if args.compare and len(args.compare) == 2:
        runs = filter_runs(load_runs(args.tracking_uri, args.experiment), tags)
        predictions = A.PredictionCache(lambda rid: P.read_scored(args.tracking_uri, rid, args.protocol))
        try:
            arm_a, arm_b = (C.resolve_arm(runs, spec) for spec in args.compare)
        except ValueError as exc:
            ap.error(f"--compare: {exc}")
        cmp, matched = C.compare(arm_a, arm_b, predictions)
        print(C.format_comparison(arm_a, arm_b, cmp, matched))
        if not args.only:  # the comparison alone; --only adds report sections (Figure 5 for this pair)
            return 0
        baseline, compare = arm_a.runs[0]["run_id"], arm_b.runs[0]["run_id"]
    else:
        baseline = args.baseline
    report = build_report(args.tracking_uri, args.experiment, experiments=args.experiments, tags=tags,
                          out=args.out, baseline=baseline, compare=compare, only=args.only,
                          protocol=args.protocol)
    print(f"wrote {report.path}")
    for name, paths in report.files.items():
        print(f"  {name}: " + ", ".join(str(p) for p in paths))
    sk = report.skipped_frame()
    if not sk.empty:
        print(f"  {len(sk)} skipped run entries (see 'Skipped runs' in report.md)")
    return 0
