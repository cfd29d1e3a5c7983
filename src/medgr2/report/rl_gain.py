"""RQ3, measured: "SFT+GRPO minus SFT" per (training source, test group) cell of the cross-domain GRPO recipes
(``cross_modality_grpo[_match]``, ``cross_task_grpo[_match]``), in-domain (test group = source) and off-diagonal
reported separately, mean ± 95% interval over seeds; plus the reward-hacking figure of every GRPO arm
(:mod:`medgr2.report.hacking_figure`). Report section ``rlgen``.

Each run holds both policies on the same test questions: the SFT policy's ``sft/test/acc/<axis>/<group>`` and the
GRPO policy's ``test/acc/<axis>/<group>`` (``stage.eval_after_sft``), so a run's gain is a paired difference and a
cell is the mean of its seeds' gains. Interval: the spread of the seeds' gains (t, n-1 df; the statistics of
docs/statistics.md with the question part unknown — the SFT policy's per-question predictions stay in the loop
folder and are not logged to MLflow), so a one-seed cell has no interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medgr2.data.schema import MODALITIES, QUESTION_TYPES
from medgr2.report import cells as Cl
from medgr2.report import run_rows as R
from medgr2.report import significance as S
from medgr2.report.aggregate import pairs as seed_pairs

# axis -> (arms, metric infix, canonical groups)
RL_ARMS = {
    "modality": (("cross_modality_grpo", "cross_modality_grpo_match"), "acc/modality/", MODALITIES),
    "question_type": (("cross_task_grpo", "cross_task_grpo_match"), "acc/qtype/", QUESTION_TYPES),
}
CELL_COLUMNS = ["arm", "source", "test", "domain", "gain", "gain lo", "gain hi", "SFT", "SFT+GRPO", "seeds"]
SUMMARY_COLUMNS = ["arm", "domain", "gain", "gain lo", "gain hi", "p", "seeds", "sources", "vs base", "vs base lo",
                   "vs base hi", "vs base p"]


def _estimate(values: Sequence[float]) -> S.Estimate:
    vals = [float(v) for v in values if not math.isnan(v)]
    if not vals:
        return S.Estimate(math.nan, math.nan, math.nan, 0, 0)
    return S.combine(float(np.mean(vals)), math.nan, vals, 0)


def run_gains(row: Mapping[str, Any], infix: str, known: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``{test group: (SFT accuracy, SFT+GRPO accuracy)}`` of one run, for the groups with both metrics."""
    sft = R.group_metrics(row, f"sft/test/{infix}", known)
    final = R.group_metrics(row, f"test/{infix}", known)
    return {g: (sft[g], final[g]) for g in final if g in sft}


def gain_tables(runs: pd.DataFrame, axis: str = "modality") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, summary) for the arms of ``axis``. Cells: one row per arm × source × test group with the gain's
    mean and interval over seeds, the mean SFT and SFT+GRPO accuracy and the seed count. Summary: per arm, the
    in-domain and off-diagonal gain — per seed, the mean over sources (and, off-diagonal, over test groups) of
    the run's gains — with its interval and two-sided p-value. ``attrs`` carry skipped / notes / used.

    Runs of a recipe with other sweep keys (an option such as ``stage.grpo.difficulty_filter=true``) form their
    own arm, ``"<recipe> [<keys>]"``; its summary rows also give ``vs base``: per seed, the option's gain minus
    the recipe's own gain on the same sources (the runs without extra keys), with its interval and p-value —
    "did the option change what GRPO does?". The match-reward recipe's rows give the same against the paper's
    reward recipe (the axis' first arm): "does the match reward do better than the paper's?"."""
    if axis not in RL_ARMS:
        raise ValueError(f"axis must be one of {sorted(RL_ARMS)}, got {axis!r}")
    arms, infix, known = RL_ARMS[axis]
    section = f"rlgen {axis}"
    skipped: list = []
    notes: list = []
    used: list = []
    cells, summary = [], []
    recipes: dict[str, dict[str, dict[str, dict[str, float]]]] = {}  # arm -> its plain runs' per-seed gains
    for arm in arms:
        variants: dict[str, list[dict[str, Any]]] = {}
        for r in R.eval_records(runs, section, skipped, experiments=[arm]):
            if R.tag(r, "source") is None:
                skipped.append(R.skip(r, section, "no source tag"))
            elif not run_gains(r, infix, known):
                skipped.append(R.skip(r, section, f"no sft/test/{infix}* metrics (stage.eval_after_sft=false?)"))
            else:
                r["_src"] = R.canonical_group(R.tag(r, "source"), known)
                r["_data"] = R.tag(r, "data") or "?"
                variants.setdefault(Cl.sweep_rest(r, (*Cl.LABEL_TAGS, "source_axis")), []).append(r)
        base: dict[str, dict[str, dict[str, float]]] | None = None
        for rest in sorted(variants, key=lambda v: (v != "", v)):  # the recipe itself first: the options' base
            label = f"{arm} [{rest}]" if rest else arm
            per_seed = _variant_cells(variants[rest], label, infix, known, section, notes, used, cells)
            if not rest:
                base = recipes[arm] = per_seed
            # an option against its recipe; the match reward's recipe against the paper's reward's
            reference = base if rest else recipes.get(arms[0]) if arm != arms[0] else None
            sources = R.ordered({s for v in per_seed.values() for by in v.values() for s in by}, known)
            for domain, by_seed in per_seed.items():
                est = _estimate([float(np.mean(list(v.values()))) for _, v in seed_pairs(by_seed)])
                row = {"arm": label, "domain": domain, "gain": est.value, "gain lo": est.lo, "gain hi": est.hi,
                       "p": est.p, "seeds": len(by_seed), "sources": len(sources)}
                if reference is not None:
                    vs = _estimate(_versus(by_seed, reference[domain]))
                    row.update({"vs base": vs.value, "vs base lo": vs.lo, "vs base hi": vs.hi, "vs base p": vs.p})
                summary.append(row)
    cell_df = pd.DataFrame(cells, columns=CELL_COLUMNS)
    summary_df = pd.DataFrame(summary, columns=SUMMARY_COLUMNS)
    if summary_df["vs base"].isna().all():
        summary_df = summary_df.drop(columns=[c for c in SUMMARY_COLUMNS if c.startswith("vs base")])
    for df in (cell_df, summary_df):
        df.attrs.update(skipped=skipped, notes=notes, used=used)
    if not summary_df.empty and summary_df["seeds"].min() < 2:
        notes.append(f"RL gain ({axis}): cells with one seed have no interval (it comes from the seed spread).")
    return cell_df, summary_df


def _variant_cells(records: list[dict[str, Any]], label: str, infix: str, known: Sequence[str], section: str,
                   notes: list, used: list, cells: list) -> dict[str, dict[str, dict[str, float]]]:
    """Append one arm's cells to ``cells``; return its per-seed gains ``{domain: {seed: {source: gain}}}``
    (off-diagonal: the run's mean over its other test groups)."""
    by = Cl.latest_by(records, lambda r: (r["_data"], r["_src"]), section, notes,
                      describe=lambda k: f"source {k[1]} ({label})")
    per_seed: dict[str, dict[str, dict[str, float]]] = {"in-domain": {}, "off-diagonal": {}}
    sources = R.ordered({k[1] for k in by}, known)
    for key in sorted(by, key=lambda k: (k[0], sources.index(k[1]))):
        src, rs = key[1], by[key]
        gains = [run_gains(r, infix, known) for r in rs]
        for r, g in zip(rs, gains, strict=True):
            seed = R.seed_of(r)
            used.append({"section": section, "row": f"{label} source {src} seed {seed}", "run_id": r["run_id"]})
            if src in g:
                per_seed["in-domain"].setdefault(seed, {})[src] = g[src][1] - g[src][0]
            off = [b - a for t, (a, b) in g.items() if t != src]
            if off:
                per_seed["off-diagonal"].setdefault(seed, {})[src] = float(np.mean(off))
        for test in R.ordered({t for g in gains for t in g}, known):
            pairs = [g[test] for g in gains if test in g]
            est = _estimate([b - a for a, b in pairs])
            cells.append({"arm": label, "source": src, "test": test,
                          "domain": "in-domain" if test == src else "off-diagonal", "gain": est.value,
                          "gain lo": est.lo, "gain hi": est.hi, "SFT": float(np.mean([a for a, _ in pairs])),
                          "SFT+GRPO": float(np.mean([b for _, b in pairs])), "seeds": len(pairs)})
    return per_seed


def _versus(option: Mapping[str, Mapping[str, float]], base: Mapping[str, Mapping[str, float]]) -> list[float]:
    """Per seed present in both: the option's mean gain minus the base's, over the sources both have."""
    out = []
    for seed, by_src in seed_pairs(option):
        common = [s for s in by_src if s in base.get(seed, {})]
        if common:
            out.append(float(np.mean([by_src[s] - base[seed][s] for s in common])))
    return out


def gain_matrix(cells: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Rows: training source, columns: test group, values: the mean gain (a fraction) of ``arm``."""
    sub = cells[cells["arm"] == arm]
    # The cells come in the axis' canonical order (modalities, question types): keep it, so the diagonal is in-domain.
    return (sub.pivot(index="source", columns="test", values="gain")
            .reindex(index=pd.unique(sub["source"]), columns=pd.unique(sub["test"]))
            .rename_axis(index="train source", columns="test group"))


# ---------------------------------------------------------------------------------------------- report glue


def display(df: pd.DataFrame) -> pd.DataFrame:
    """Display copy: ``gain ± half-width`` in points, accuracies in percent, ``p`` as a p-value."""
    from medgr2.report.render import with_intervals

    shown = with_intervals(df)
    for col in ("p", "vs base p"):
        if col in df.columns:
            shown[col] = df[col].map(S.format_p)
    return shown


def section(report, runs: pd.DataFrame, tracking_uri: str, experiment: str) -> None:
    """Fill ``report`` (a :class:`medgr2.report.cli.Report`) with the ``rlgen`` tables, heatmaps and the
    reward-hacking figures of every GRPO arm."""
    from medgr2.report import figures as F
    from medgr2.report.hacking_figure import file_label, hacking_figures
    from medgr2.report.render import to_csv, to_markdown

    out, notes = report.out, report.notes.setdefault("rlgen", [])
    for axis in RL_ARMS:
        cells, summary = gain_tables(runs, axis)
        report.skipped.extend(cells.attrs["skipped"])
        notes.extend(cells.attrs["notes"])
        report.used.extend(cells.attrs["used"])
        if cells.empty:
            notes.append(f"RL gain ({axis}): no finished {' / '.join(RL_ARMS[axis][0])} runs.")
            continue
        for name, df in ((f"rlgen_{axis}_cells", cells), (f"rlgen_{axis}_summary", summary)):
            (out / f"{name}.md").write_text(to_markdown(display(df)) + "\n", encoding="utf-8")
            report.tables[name] = df
            report.files[name] = [out / f"{name}.md", to_csv(df, out / f"{name}.csv", index=False)]
        for arm in cells["arm"].unique():
            name = f"rlgen_{axis}_{file_label(arm)}"
            fig = F.plot_transfer(gain_matrix(cells, arm), f"{arm}: SFT+GRPO minus SFT (points, mean of seeds)",
                                  center=0.0, value_label="gain (points)", center_label="no effect", center_unit=" points",
                                  symmetric=True)
            report.figures[name] = F.save_png(fig, out / f"{name}.png")
    files, table = hacking_figures(tracking_uri, out, experiment)
    for path in files.values():
        report.figures[path.stem] = path
    if not table.empty:
        report.tables["hacking_summary"] = table
        report.files["hacking_summary"] = [to_csv(table, out / "hacking_summary.csv", index=False)]
    elif not files:
        notes.append("Reward hacking: no finished GRPO runs in the store.")


def render(report) -> list[str]:
    """The ``rlgen`` section of ``report.md``."""
    from medgr2.report.render import to_markdown

    L = ["## RQ3 — does GRPO generalize? SFT+GRPO minus SFT, and reward hacking", "",
         "Gain = the run's test accuracy after GRPO minus its SFT policy's, on the same questions (percentage "
         "points); in-domain: test group = training source; off-diagonal: the other groups. Intervals: the spread "
         "over seeds (docs/rl_generalization.md).", ""]
    for axis in RL_ARMS:
        name = f"rlgen_{axis}_summary"
        if name in report.tables:
            L += [f"### {axis}", "", to_markdown(display(report.tables[name])), ""]
            L += [f"![{k}]({k}.png)" for k in report.figures if k.startswith(f"rlgen_{axis}_")] + [""]
            L += [f"Cells: {' · '.join(f'[{p.name}]({p.name})' for p in report.files[f'rlgen_{axis}_cells'])}", ""]
    hack = [k for k in report.figures if k.startswith("hacking_")]
    if hack:
        L += ["### Reward hacking: the R_φ term and accuracy over GRPO steps", ""]
        if "hacking_summary" in report.tables:
            L += [to_markdown(report.tables["hacking_summary"], percent=False), ""]
        L += [f"![{k}]({k}.png)" for k in hack] + [""]
    L += [f"- {n}" for n in report.notes.get("rlgen", [])] + [""]
    return L


# ---------------------------------------------------------------------------------------------- claims rows

ARM_LABELS = {"cross_modality_grpo": "paper's reward", "cross_modality_grpo_match": "match reward",
              "cross_task_grpo": "paper's reward", "cross_task_grpo_match": "match reward"}
AXIS_WORDS = {"modality": "modalities", "question_type": "tasks"}


def claims_rows(runs: pd.DataFrame, margin: float = 0.01) -> list[dict[str, Any]]:
    """Rows for the report's claims table (:data:`medgr2.report.claims.COLUMNS`): per axis and arm, "GRPO helps
    in-domain" and "GRPO generalizes (off-diagonal)", each the summary's gain over seeds with its interval and
    verdict (``significance.verdict``, relation '>', ``margin``). An axis without runs gives one "not measured"
    row for the paper's reward off-diagonal (the paper's RQ3 claim)."""
    rows = []
    for axis, (arms, _infix, _known) in RL_ARMS.items():
        _, summary = gain_tables(runs, axis)
        if summary.empty:
            rows.append({"claim": f"RL generalizes across {AXIS_WORDS[axis]} (GRPO, paper's reward, off-diagonal)",
                         "comparison (B vs A)": f"{arms[0]}: SFT+GRPO vs SFT", "difference": "–", "95% CI": "–",
                         "p": "–", "seeds": 0, "test": "not measured", "verdict": "not measured", "diff": math.nan,
                         "lo": math.nan, "hi": math.nan, "p_value": math.nan, "run_ids": ""})
            continue
        for r in summary.to_dict("records"):
            what = "helps in-domain" if r["domain"] == "in-domain" else f"generalizes across {AXIS_WORDS[axis]}"
            rows.append(_claim(f"GRPO ({ARM_LABELS.get(r['arm'], r['arm'])}) {what}",
                               f"{r['arm']}: SFT+GRPO vs SFT, {r['domain']}", r["gain"], r["gain lo"], r["gain hi"],
                               r["p"], int(r["seeds"]), f"t over seeds of the per-run gain ({int(r['sources'])} sources)",
                               margin))
            if not math.isnan(r.get("vs base", math.nan)):
                recipe, _, option = r["arm"].partition(" [")
                if option:
                    claim = f"{option.rstrip(']')} raises GRPO's gain ({r['domain']})"
                    comparison = f"{recipe} with vs without it: gain difference, {r['domain']}"
                else:
                    claim = f"the match reward raises GRPO's gain over the paper's reward ({r['domain']})"
                    comparison = f"{recipe} vs {arms[0]}: gain difference, {r['domain']}"
                rows.append(_claim(claim, comparison, r["vs base"], r["vs base lo"], r["vs base hi"], r["vs base p"],
                                   int(r["seeds"]),
                                   f"t over seeds of the paired gain difference ({int(r['sources'])} sources)", margin))
    return rows


def _claim(claim: str, comparison: str, diff: float, lo: float, hi: float, p: float, seeds: int, test: str,
           margin: float) -> dict[str, Any]:
    """One row of the claims table (verdict: B > A by more than ``margin``)."""
    est = S.Estimate(diff, lo, hi, seeds, 0, p=p)
    return {"claim": claim, "comparison (B vs A)": comparison, "difference": f"{100 * diff:+.1f}",
            "95% CI": "–" if math.isnan(lo) else f"[{100 * lo:+.1f}, {100 * hi:+.1f}]", "p": S.format_p(p),
            "seeds": seeds, "test": test, "verdict": S.verdict(est, ">", margin), "diff": diff, "lo": lo, "hi": hi,
            "p_value": p, "run_ids": ""}
