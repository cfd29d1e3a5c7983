"""Build the report: run each section's table or figure builder, write its files, and ``report.md``.

For each table :func:`build_report` writes ``<name>.md``, ``<name>.csv`` (exact fractions) and ``<name>.tex``
(booktabs, percent); for each figure a PNG and the CSV of its data; ``report.md``
(:func:`medgr2.report.report_md.render_report`) embeds every table and links every figure.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medgr2.report import aggregate as A
from medgr2.report import claims as C
from medgr2.report import figure_data as D
from medgr2.report import figures as F
from medgr2.report import protocol as P
from medgr2.report import tables as T
from medgr2.report.mlflow_runs import filter_runs, has_artifact, load_runs, read_predictions
from medgr2.report.picking import pick_pair
from medgr2.report.render import to_csv, to_latex, to_markdown, with_intervals
from medgr2.report.report_md import render_report
from medgr2.report.run_rows import not_evaluated, skip, tag

log = logging.getLogger(__name__)

SECTIONS = ("table1", "table2", "fig2", "fig4", "fig5", "claims", "rlgen")


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
                 if has_artifact(tracking_uri, r)]
        for rid in cands[:3]:  # a few tries; an unreadable artifact only means no per-modality chance
            try:
                got = T.chance_by_modality(read_predictions(tracking_uri, rid))
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
    pts = D.fig2_points(runs, predictions)
    _absorb(report, "fig2", pts)
    if pts.empty:
        report.notes["fig2"].append("Figure 2: no runs of randk / topk / topk_grpo / rand_all with test/acc.")
        return
    _write_figure(report, "fig2", F.plot_fig2(pts), pts)


def _section_fig4(report: Report, runs: pd.DataFrame) -> None:
    for name, axis, title in (("fig4a_cross_task", "question_type", "Cross-task transfer"),
                              ("fig4b_cross_modality", "modality", "Cross-modality transfer")):
        mat = D.transfer_matrix(runs, axis)
        _absorb(report, "fig4", mat)
        if mat.empty:
            exp = D.TRANSFER_AXES[axis][0]
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
            preds[role] = read_predictions(tracking_uri, run["run_id"])
        except Exception as exc:  # noqa: BLE001 - missing artifact, unreadable store, bad JSON
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            report.skipped.append(skip(run, "fig5", f"no readable predictions.jsonl artifact ({first})"))
            notes.append(f"Figure 5 not drawn: the {role} run {run['run_id'][:8]} has no readable predictions.")
    if len(preds) < 2:
        return
    try:
        trans = D.transitions(preds["baseline"], preds["compare"])
    except ValueError as exc:
        notes.append(f"Figure 5 not drawn: {exc}.")
        return
    notes.extend(trans.attrs.get("notes", []))
    if int(trans.loc["All", "n"]) == 0:
        notes.append("Figure 5 not drawn: the two runs' predictions share no question id.")
        return
    b_label = tag(base, "policy") or f"{tag(base, 'experiment')} {base['run_id'][:8]}"
    c_label = tag(comp, "policy") or f"{tag(comp, 'experiment')} {comp['run_id'][:8]}"
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
    all_runs = load_runs(tracking_uri, experiment)
    predictions = A.PredictionCache(lambda rid: P.read_scored(tracking_uri, rid, protocol))
    ignored = dict(all_runs.attrs.get("ignored", {}))
    filters = {k: list(v) for k, v in (tags or {}).items()}
    if experiments:
        filters["experiment"] = [e for e in filters.get("experiment", experiments) if e in experiments]
    runs = filter_runs(all_runs, filters)
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
    other = not_evaluated(runs)
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
