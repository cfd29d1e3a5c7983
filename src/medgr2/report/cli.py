# Over ~450 lines: its split by responsibility is open work of issue 17 (see docs/architecture.md); behaviour is tested as it is.
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
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medgr2.evaluation.protocols import PROTOCOLS
from medgr2.report import aggregate as A
from medgr2.report import claims as C
from medgr2.report import figures as F
from medgr2.report import protocol as P
from medgr2.report import tables as T
from medgr2.report.render import to_csv, to_latex, to_markdown, with_intervals

log = logging.getLogger(__name__)

SECTIONS = ("table1", "table2", "fig2", "fig4", "fig5", "claims", "rlgen")
DEFAULT_BASELINE = ("sft_raw",)
DEFAULT_COMPARE = ("grpo", "topk_grpo")


@dataclass
class Report:
    """What :func:`build_report` made: the tables (DataFrames), written files, and the report's lists."""

    out: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    used: list[dict[str, str]] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    path: Path | None = None
    protocol: str = ""  # the scoring protocol(s) of the runs used, shown in every table header

    def skipped_frame(self) -> pd.DataFrame:
        """Skipped runs, one row per (run, reason), with the sections it was skipped from."""
        cols = ["run_id", "run_name", "experiment", "stage", "reason", "sections"]
        merged: dict[tuple[str, str], dict[str, str]] = {}
        for s in self.skipped:
            key = (s["run_id"], s["reason"])
            if key in merged:
                if s["section"] not in merged[key]["sections"].split(", "):
                    merged[key]["sections"] += ", " + s["section"]
            else:
                merged[key] = {**{k: s[k] for k in cols[:-1]}, "sections": s["section"]}
        return pd.DataFrame(list(merged.values()), columns=cols)


def _absorb(report: Report, section: str, df: pd.DataFrame) -> None:
    report.skipped.extend(df.attrs.get("skipped", []))
    report.notes.setdefault(section, []).extend(df.attrs.get("notes", []))
    report.used.extend(df.attrs.get("used", []))


def _write_table(report: Report, name: str, df: pd.DataFrame, caption: str) -> None:
    out = report.out
    index = not isinstance(df.index, pd.RangeIndex)
    shown = with_intervals(df)  # "mean ± half-width" cells; the CSV keeps mean, lo, hi
    md = to_markdown(shown)
    (out / f"{name}.md").write_text(md + "\n", encoding="utf-8")
    (out / f"{name}.tex").write_text(to_latex(shown, caption=caption, label=f"tab:{name}"), encoding="utf-8")
    to_csv(df, out / f"{name}.csv", index=index)
    report.tables[name] = df
    report.files[name] = [out / f"{name}.md", out / f"{name}.csv", out / f"{name}.tex"]


def _write_figure(report: Report, name: str, fig, data: pd.DataFrame) -> None:
    png = F.save_png(fig, report.out / f"{name}.png")
    csv = to_csv(data, report.out / f"{name}.csv", index=not isinstance(data.index, pd.RangeIndex))
    report.figures[name] = png
    report.tables[name] = data
    report.files[name] = [png, csv]


def table1_with_chance(runs: pd.DataFrame, tracking_uri: str,
                       predictions: A.PredictionCache | None = None) -> pd.DataFrame:
    """:func:`~medgr2.report.tables.table1`; when no ``test/chance/modality/*`` metrics are logged, the chance
    row per modality is computed from the newest ``predictions.jsonl`` of that data set with ``n_options``."""
    t1 = T.table1(runs, predictions=predictions)
    chance: dict[str, dict[str, float]] = {}
    found: list[str] = []
    mods = [c for c in t1.columns if c not in ("policy", "data", "Overall", "run_id")]
    by_start = dict(zip(runs["run_id"], runs["start_time"], strict=True)) if not runs.empty else {}
    for _, row in t1[t1["policy"] == "chance"].iterrows():
        if not mods or not all(pd.isna(row[m]) for m in mods):
            continue
        cands = t1[(t1["data"] == row["data"]) & (t1["policy"] != "chance")]["run_id"].tolist()
        cands = [r for r in sorted(cands, key=lambda r: str(by_start.get(r)), reverse=True)
                 if T.has_artifact(tracking_uri, r)]
        for rid in cands[:3]:  # a few tries; an unreadable artifact only means no per-modality chance
            try:
                got = T.chance_by_modality(T.read_predictions(tracking_uri, rid))
            except Exception as exc:  # noqa: BLE001
                log.debug("no predictions for chance from %s: %s", rid, exc)
                continue
            if got:
                chance[row["data"]] = got
                found.append(f"Table 1: chance per modality on {row['data']} = mean 1/n_options over the "
                             f"predictions of run {rid[:8]} (no test/chance/modality/* metrics logged).")
                break
    if chance:
        t1 = T.table1(runs, chance=chance, predictions=predictions)
        t1.attrs["notes"] = [*t1.attrs["notes"], *found]
    return t1


def _section_table1(report: Report, runs: pd.DataFrame, tracking_uri: str,
                    predictions: A.PredictionCache | None = None) -> None:
    t1 = table1_with_chance(runs, tracking_uri, predictions)
    _absorb(report, "table1", t1)
    _write_table(report, "table1", t1, "Test accuracy (%) per modality and overall; chance last.")


def _section_table2(report: Report, runs: pd.DataFrame, predictions: A.PredictionCache | None = None) -> None:
    t2 = T.table2(runs, predictions)
    _absorb(report, "table2", t2)
    report.notes["table2"].extend(f"Table 2: missing row {m}." for m in t2.attrs.get("missing", []))
    _write_table(report, "table2", t2, "Ablation: accuracy, macro-F1 and AUC (%) on each eval set.")


def _section_fig2(report: Report, runs: pd.DataFrame, predictions: A.PredictionCache | None = None) -> None:
    pts = T.fig2_points(runs, predictions)
    _absorb(report, "fig2", pts)
    if pts.empty:
        report.notes["fig2"].append("Figure 2: no runs of randk / topk / topk_grpo / rand_all with test/acc.")
        return
    _write_figure(report, "fig2", F.plot_fig2(pts), pts)


def _section_fig4(report: Report, runs: pd.DataFrame) -> None:
    for name, axis, title in (("fig4a_cross_task", "question_type", "Cross-task transfer"),
                              ("fig4b_cross_modality", "modality", "Cross-modality transfer")):
        mat = T.transfer_matrix(runs, axis)
        _absorb(report, "fig4", mat)
        if mat.empty:
            exp = T.TRANSFER_AXES[axis][0]
            report.notes["fig4"].append(f"Figure 4 ({title.lower()}): no usable {exp} runs.")
            continue
        _write_figure(report, name, F.plot_transfer(mat, title, center=mat.attrs.get("chance")), mat)


def _section_claims(report: Report, runs: pd.DataFrame, tracking_uri: str, experiment: str,
                    predictions: A.PredictionCache) -> None:
    children = C.LoopIterations.from_store(tracking_uri, experiment)
    table = C.claims_table(runs, predictions, children)
    report.notes["claims"].extend(table.attrs.get("notes", []))
    out = report.out
    (out / "claims.md").write_text(C.claims_markdown(table) + "\n", encoding="utf-8")
    csv = to_csv(table, out / "claims.csv", index=False)
    report.tables["claims"] = table
    report.files["claims"] = [out / "claims.md", csv]


def pick_pair(runs: pd.DataFrame, all_runs: pd.DataFrame | None = None, baseline: str | None = None,
              compare: str | None = None) -> tuple[dict | None, str, dict | None, str]:
    """Figure 5's two runs: ``(baseline, how, compare, how)``; a run is ``None`` when nothing matches (``how``
    then says why). Given specs are resolved by :func:`~medgr2.report.tables.resolve_run` among ``runs``, then
    ``all_runs``; the defaults are the best ``grpo``/``topk_grpo`` run and the best ``sft_raw`` run on the
    same data set (any data set when there is none)."""

    def pick(spec: str | None, default: Sequence[str], data: str | None) -> tuple[dict | None, str]:
        if spec:
            run, how = T.resolve_run(runs, spec)
            if run is None and all_runs is not None:  # not among the filtered runs: any finished top-level run
                run, how = T.resolve_run(all_runs, spec)
            return run, how
        if data:
            run, how = T.best_run(runs, default, data=data)
            if run is not None:
                return run, how
        return T.best_run(runs, default)

    comp, how_c = pick(compare, DEFAULT_COMPARE, None)
    base, how_b = pick(baseline, DEFAULT_BASELINE, T.tag(comp, "data") if comp else None)
    return base, how_b, comp, how_c


def _section_fig5(report: Report, runs: pd.DataFrame, all_runs: pd.DataFrame, tracking_uri: str,
                  baseline: str | None, compare: str | None) -> None:
    notes = report.notes.setdefault("fig5", [])
    base, how_b, comp, how_c = pick_pair(runs, all_runs, baseline, compare)
    for role, run, how in (("baseline", base, how_b), ("compare", comp, how_c)):
        if run is None:
            notes.append(f"Figure 5 not drawn: no {role} run ({how}).")
        else:
            notes.append(f"Figure 5 {role}: {how}.")
    if base is None or comp is None:
        return
    preds = {}
    for role, run in (("baseline", base), ("compare", comp)):
        try:
            preds[role] = T.read_predictions(tracking_uri, run["run_id"])
        except Exception as exc:  # noqa: BLE001 - missing artifact, unreadable store, bad JSON
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            report.skipped.append(T.skip(run, "fig5", f"no readable predictions.jsonl artifact ({first})"))
            notes.append(f"Figure 5 not drawn: the {role} run {run['run_id'][:8]} has no readable predictions.")
    if len(preds) < 2:
        return
    try:
        trans = T.transitions(preds["baseline"], preds["compare"])
    except ValueError as exc:
        notes.append(f"Figure 5 not drawn: {exc}.")
        return
    notes.extend(trans.attrs.get("notes", []))
    if int(trans.loc["All", "n"]) == 0:
        notes.append("Figure 5 not drawn: the two runs' predictions share no question id.")
        return
    b_label = T.tag(base, "policy") or f"{T.tag(base, 'experiment')} {base['run_id'][:8]}"
    c_label = T.tag(comp, "policy") or f"{T.tag(comp, 'experiment')} {comp['run_id'][:8]}"
    trans.attrs["baseline"], trans.attrs["compare"] = base["run_id"], comp["run_id"]
    report.used += [{"section": "fig5", "row": "baseline", "run_id": base["run_id"]},
                    {"section": "fig5", "row": "compare", "run_id": comp["run_id"]}]
    _write_figure(report, "fig5", F.plot_transitions(trans, b_label, c_label), trans)


def build_report(tracking_uri: str = "sqlite:///mlflow.db", experiment: str = "medgr2", *,
                 experiments: Sequence[str] | None = None, tags: Mapping[str, Sequence[str]] | None = None,
                 out: str | Path = "reports", baseline: str | None = None, compare: str | None = None,
                 only: Sequence[str] | None = None, protocol: str | None = None) -> Report:
    """Read MLflow, write every requested section into ``out`` and ``out/report.md``; return what was made."""
    sections = list(only) if only else list(SECTIONS)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    report = Report(out=Path(out))
    report.out.mkdir(parents=True, exist_ok=True)
    all_runs = T.load_runs(tracking_uri, experiment)
    predictions = A.PredictionCache(lambda rid: P.read_scored(tracking_uri, rid, protocol))
    ignored = dict(all_runs.attrs.get("ignored", {}))
    filters = {k: list(v) for k, v in (tags or {}).items()}
    if experiments:
        filters["experiment"] = [e for e in filters.get("experiment", experiments) if e in experiments]
    runs = T.filter_runs(all_runs, filters)
    if protocol:  # rescore saved predictions before any table is built
        runs, rescore_notes = P.rescore_runs(runs, tracking_uri, protocol)
    report.protocol = P.protocol_label(runs)

    s = report.summary
    s.append(f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} from `{tracking_uri}`, "
             f"MLflow experiment `{experiment}`.")
    if not ignored.get("experiment_found", True):
        s.append(f"**The MLflow experiment `{experiment}` does not exist in this store.**")
    if filters:
        s.append("Filters: " + "; ".join(f"`{k}` in {{{', '.join(v)}}}" for k, v in filters.items()) + ".")
    s.append(f"Scoring {report.protocol}." + (" " + " ".join(rescore_notes) if protocol else ""))
    s.append(f"{len(runs)} finished top-level runs used as input"
             + (f" ({len(all_runs) - len(runs)} more excluded by the filters)" if filters else "") + ".")
    nf = ignored.get("not_finished") or {}
    if nf or ignored.get("children"):
        parts = []
        if ignored.get("children"):
            parts.append(f"{ignored['children']} child runs (with `mlflow.parentRunId`)")
        if nf:
            parts.append(f"{sum(nf.values())} runs not FINISHED ("
                         + ", ".join(f"{k}: {v}" for k, v in sorted(nf.items())) + ")")
        s.append("Ignored: " + " and ".join(parts) + ".")
    other = T.not_evaluated(runs)
    if other:
        s.append("Not evaluation runs (no `test/` metric; their stages do not evaluate), not used: "
                 + ", ".join(f"{k}: {v}" for k, v in other.items()) + ".")

    s.append(A.describe_method(True))
    for sec in sections:
        report.notes.setdefault(sec, [])
        if sec == "table1":
            _section_table1(report, runs, tracking_uri, predictions)
        elif sec == "table2":
            _section_table2(report, runs, predictions)
        elif sec == "fig2":
            _section_fig2(report, runs, predictions)
        elif sec == "claims":
            _section_claims(report, runs, tracking_uri, experiment, predictions)
        elif sec == "fig4":
            _section_fig4(report, runs)
        elif sec == "fig5":
            _section_fig5(report, runs, all_runs, tracking_uri, baseline, compare)
        elif sec == "rlgen":  # RQ3 gains and reward-hacking figures (medgr2.report.rl_gain)
            from medgr2.report import rl_gain

            rl_gain.section(report, runs, tracking_uri, experiment)
    report.path = report.out / "report.md"
    report.path.write_text(render_report(report, sections), encoding="utf-8")
    return report


def _links(report: Report, name: str) -> str:
    return " · ".join(f"[{p.name}]({p.name})" for p in report.files.get(name, []))


def _notes(report: Report, sec: str) -> list[str]:
    return [f"- {n}" for n in report.notes.get(sec, [])]


def render_report(report: Report, sections: Sequence[str]) -> str:
    """The ``report.md`` text: summary, each section (tables inline, figures embedded), runs used, skipped."""
    L: list[str] = ["# MedGR2 report", "", *report.summary, "",
                    "Accuracies are in percent; the CSV files hold the exact fractions.", ""]
    if "table1" in sections:
        L += [f"## Table 1 — accuracy per modality ({report.protocol})", "",
              to_markdown(with_intervals(report.tables["table1"])), "",
              f"Files: {_links(report, 'table1')}", *_notes(report, "table1"), ""]
    if "table2" in sections:
        L += [f"## Table 2 — ablation ({report.protocol})", "",
              "Rows: base = `zero_shot`, SFT raw = `sft_raw`, SFT rewarded = `sft_rewarded`, +GRPO = `grpo` "
              "(the TopK+GRPO run with the largest K, `topk_grpo`, only when there is no `grpo` run). "
              "Column groups: eval set = the run's `data` tag, test split.", "",
              to_markdown(with_intervals(report.tables["table2"])), "", f"Files: {_links(report, 'table2')}",
              *_notes(report, "table2"), ""]
    if "fig2" in sections:
        L += [f"## Figure 2 — accuracy vs K ({report.protocol})", ""]
        if "fig2" in report.figures:
            L += ["![Figure 2: test accuracy vs K](fig2.png)", "", to_markdown(with_intervals(report.tables["fig2"])), "",
                  f"Files: {_links(report, 'fig2')}"]
        L += [*_notes(report, "fig2"), ""]
    if "fig4" in sections:
        L += [f"## Figure 4 — transfer ({report.protocol})", "",
              "Rows: training source (tag `source`); columns: test group; cells: test accuracy. "
              "Colours are centred at the runs' median overall chance: warm above, cool below.", ""]
        for name, title in (("fig4a_cross_task", "(a) cross-task"), ("fig4b_cross_modality", "(b) cross-modality")):
            if name in report.figures:
                L += [f"### {title}", "", f"![Figure 4 {title}]({name}.png)", "",
                      to_markdown(report.tables[name]), "", f"Files: {_links(report, name)}", ""]
        L += [*_notes(report, "fig4"), ""]
    if "fig5" in sections:
        L += ["## Figure 5 — error transitions", ""]
        if "fig5" in report.figures:
            L += ["![Figure 5: error transitions](fig5.png)", "",
                  to_markdown(report.tables["fig5"], percent=False), "", f"Files: {_links(report, 'fig5')}"]
        L += [*_notes(report, "fig5"), ""]
    if "claims" in sections:
        L += ["## The paper's claims, tested", "", C.CLAIMS_INTRO, ""]
        if "claims" in report.tables:
            L += [C.claims_markdown(report.tables["claims"]), "",
                  f"Files: {_links(report, 'claims')}"]
        L += [*_notes(report, "claims"), ""]
    if "rlgen" in sections:
        from medgr2.report import rl_gain

        L += rl_gain.render(report)
    L += ["## Runs used", ""]
    if report.used:
        L.append(to_markdown(pd.DataFrame(report.used, columns=["section", "row", "run_id"]), hide=()))
    else:
        L.append("_none_")
    L += ["", "## Skipped runs", ""]
    sk = report.skipped_frame()
    L.append("_none_" if sk.empty else to_markdown(sk, hide=()))
    return "\n".join(L).rstrip() + "\n"


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
        runs = T.filter_runs(T.load_runs(args.tracking_uri, args.experiment), tags)
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
