"""Paired comparisons of two arms and the paper's claims table, generated from the runs' saved predictions.

An *arm* is one recipe with fixed sweep keys (``topk k=2000``) or one run (its id); its seeds are its
replicates. Two arms are compared on the test questions both answered, seed by seed (seed-matched: arm A's
seed 1 against arm B's seed 1), by :func:`medgr2.report.significance.paired_comparison`. The claims table runs
one such comparison per claim of the paper and turns its interval into a verdict
(:func:`medgr2.report.significance.verdict`): see ``docs/statistics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medgr2.report import significance as S
from medgr2.report.aggregate import PredictionCache
from medgr2.report.cells import latest_by
from medgr2.report.figure_data import fig2_points, transfer_matrix
from medgr2.report.mlflow_runs import PARENT_TAG, load_runs
from medgr2.report.run_rows import as_int, eval_records, metric, records, seed_of, sweep_of, tag
from medgr2.report.tables import table2

MARGIN = 0.01  # one point: a gain smaller than this is "no gain" (see significance.verdict)
CLAIMS_INTRO = (f"Each row compares two arms on the same test questions, seed by seed (B − A, percentage points). "
                f"Verdict at 95%: **reproduced** — the interval lies above 0 (for '≥': above −{100 * MARGIN:.0f} "
                f"point), **reproduced, under {100 * MARGIN:.0f} point** when it also lies below +{100 * MARGIN:.0f} "
                f"(real, but too small to be the claimed gain); **not reproduced** — it lies below "
                f"+{100 * MARGIN:.0f} point otherwise (for '≥': below 0); "
                "**inconclusive** — neither: more seeds or test questions are needed. One seed: McNemar's exact p "
                "and a paired bootstrap interval (the seed spread is not in it). Several: a seed-matched paired t "
                "whose standard error adds the question bootstrap.")
COLUMNS = ["claim", "comparison (B vs A)", "difference", "95% CI", "p", "seeds", "test", "verdict",
           "diff", "lo", "hi", "p_value", "run_ids"]
HIDDEN = ("diff", "lo", "hi", "p_value", "run_ids")


@dataclass
class Arm:
    """One arm: a label and its runs, one per seed."""

    label: str
    runs: list[dict[str, Any]]

    @property
    def seeds(self) -> list[str]:
        return [seed_of(r) for r in self.runs]


@dataclass
class Matched:
    """Two arms' correctness on shared questions, seed-matched: ``a`` and ``b`` are ``seeds x questions``."""

    seeds: list[str]
    a: np.ndarray
    b: np.ndarray
    ids: list[str]
    run_ids: list[str]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- arms


def resolve_arm(runs: pd.DataFrame, spec: str) -> Arm:
    """The arm ``spec`` names: a run id or a unique prefix of >= 6 characters (one run), or
    ``"recipe [key=value ...]"`` (its runs on every seed; the keys match tags or sweep keys). Raises
    ``ValueError`` naming the choices when the spec matches nothing or several sweep settings."""
    recs = [r for r in eval_records(runs, "compare", []) if not math.isnan(metric(r, "test/acc"))]
    by_id = [r for r in recs if r["run_id"] == spec or (len(spec) >= 6 and r["run_id"].startswith(spec))]
    if len(by_id) == 1:
        r = by_id[0]
        return Arm(f"{tag(r, 'experiment')} run {r['run_id'][:8]}", [r])
    recipe, *pairs = spec.split()
    want = dict(p.partition("=")[::2] for p in pairs)
    if any(not v for v in want.values()):
        raise ValueError(f"arm {spec!r}: write it as a run id or 'recipe key=value ...'")
    mine = [r for r in recs if tag(r, "experiment") == recipe and all(_has(r, k, v) for k, v in want.items())]
    if not mine:
        known = sorted({tag(r, "experiment") or "?" for r in recs})
        raise ValueError(f"arm {spec!r}: no finished evaluation run of recipe {recipe!r} with {want or 'any keys'}"
                         f" (recipes with runs: {', '.join(known) or 'none'})")
    notes: list[str] = []
    groups = latest_by(mine, lambda r: (tag(r, "data") or "?", sweep_of(r) or _label_tags(r)), "compare", notes)
    if len(groups) > 1:
        opts = "; ".join(f"{recipe} {k[1]}" + (f" (data {k[0]})" if k[0] != "?" else "") for k in groups)
        raise ValueError(f"arm {spec!r} matches {len(groups)} settings: {opts}; add the keys that tell them apart")
    return Arm(spec, next(iter(groups.values())))


def _label_tags(r: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={tag(r, k)}" for k in ("k", "source") if tag(r, k) is not None)


def _has(r: Mapping[str, Any], key: str, value: str) -> bool:
    got = tag(r, f"sweep.{key}") or tag(r, key)
    if got is None:
        return f"{key}={value}" in sweep_of(r).split()
    return got == value or (as_int(got) is not None and as_int(got) == as_int(value))


def match(a: Arm, b: Arm, predictions: PredictionCache) -> Matched:
    """Seed-matched correctness of two arms on the questions every run answered. Seeds both arms have are
    paired; when they share none but each has one run, those two are paired (noted)."""
    notes: list[str] = []
    a_by, b_by = {seed_of(r): r for r in a.runs}, {seed_of(r): r for r in b.runs}
    seeds = [s for s in a_by if s in b_by]
    pairs = [(s, a_by[s], b_by[s]) for s in seeds]
    if not pairs and len(a.runs) == 1 and len(b.runs) == 1:
        pairs = [(f"{a.seeds[0]}/{b.seeds[0]}", a.runs[0], b.runs[0])]
        notes.append(f"{b.label} vs {a.label}: no shared seed; compared seed {a.seeds[0]} with seed {b.seeds[0]}.")
    left = sorted((set(a_by) | set(b_by)) - set(seeds))
    if left and seeds:
        notes.append(f"{b.label} vs {a.label}: seeds {', '.join(left)} are in one arm only; left out.")
    series, kept = [], []
    for s, ra, rb in pairs:
        ca, cb = predictions.correct(ra["run_id"]), predictions.correct(rb["run_id"])
        if ca is None or cb is None:
            notes.append(f"{b.label} vs {a.label}: seed {s} has no readable predictions; left out.")
            continue
        series.append((ca, cb))
        kept.append((s, ra["run_id"], rb["run_id"]))
    if not series:
        return Matched([], np.zeros((0, 0)), np.zeros((0, 0)), [], [], notes)
    ids = sorted(set.intersection(*(set(ca.index) & set(cb.index) for ca, cb in series)))
    a_m = np.stack([ca.loc[ids].to_numpy(float) for ca, _ in series])  # [seeds, questions]
    b_m = np.stack([cb.loc[ids].to_numpy(float) for _, cb in series])
    return Matched([k[0] for k in kept], a_m, b_m, ids, [i for k in kept for i in k[1:]], notes)


def compare(a: Arm, b: Arm, predictions: PredictionCache) -> tuple[S.Comparison | None, Matched]:
    """B - A on their shared questions (``None`` when nothing could be paired)."""
    m = match(a, b, predictions)
    if not m.seeds or not m.ids:
        return None, m
    return S.paired_comparison(m.a, m.b, seeds=m.seeds), m


def format_comparison(a: Arm, b: Arm, cmp: S.Comparison | None, m: Matched) -> str:
    """The text ``python -m medgr2.report --compare A B`` prints."""
    lines = [f"B = {b.label}   vs   A = {a.label}"]
    if cmp is None:
        return "\n".join([*lines, "no seed-matched predictions to compare", *m.notes])
    e = cmp.estimate
    lines.append(f"{len(m.ids)} shared test questions, {len(m.seeds)} seed(s): {', '.join(m.seeds)}")
    lines.append("seed    acc A    acc B    B-A   only A  only B  McNemar p")
    for s, aa, bb, (oa, ob, p) in zip(m.seeds, cmp.acc_a, cmp.acc_b, cmp.mcnemar, strict=True):
        lines.append(f"{s:>4}  {100 * aa:6.1f}   {100 * bb:6.1f}  {100 * (bb - aa):+5.1f}  {oa:6d}  {ob:6d}  "
                     f"{S.format_p(p):>9}")
    lines.append(f"difference B - A: {100 * e.value:+.2f} points, 95% CI [{100 * e.lo:+.2f}, {100 * e.hi:+.2f}], "
                 f"p = {S.format_p(e.p)} ({cmp.test})")
    return "\n".join([*lines, *m.notes])


# ---------------------------------------------------------------------------------------------- loops


class LoopIterations:
    """Per-iteration policies of loop runs, from their nested MLflow runs: iteration ``t``'s last evaluated
    step (GRPO, else SFT) under the ``iter<t>`` child of the top-level run."""

    def __init__(self, children: pd.DataFrame):
        self.children = children

    @classmethod
    def from_store(cls, tracking_uri: str, experiment: str) -> LoopIterations:
        all_runs = load_runs(tracking_uri, experiment, top_level_only=False)
        col = f"tags.{PARENT_TAG}"
        return cls(all_runs[all_runs[col].notna()] if col in all_runs else all_runs.iloc[0:0])

    def step_run(self, top_run_id: str, t: int) -> dict[str, Any] | None:
        """Iteration ``t``'s final evaluated step run of the loop ``top_run_id``, or ``None``."""
        recs = records(self.children)
        iters = [r for r in recs if tag(r, PARENT_TAG) == top_run_id and tag(r, "iteration") == str(t)]
        if not iters:
            return None
        steps = [r for r in recs if tag(r, PARENT_TAG) == iters[-1]["run_id"]
                 and tag(r, "stage") in ("grpo", "sft") and not math.isnan(metric(r, "test/acc"))]
        steps.sort(key=lambda r: (tag(r, "stage") == "grpo", str(r.get("start_time"))))
        return steps[-1] if steps else None


# ---------------------------------------------------------------------------------------------- claims


def _row(claim: str, a: Arm | None, b: Arm | None, predictions: PredictionCache, relation: str = ">",
         notes: list[str] | None = None, transform=None) -> dict[str, Any]:
    """One claims-table row: compare the arms (``transform`` may replace the matched matrices) and judge."""
    base = {"claim": claim, "comparison (B vs A)": f"{b.label if b else '?'} vs {a.label if a else '?'}"}
    if a is None or b is None:
        return {**base, "difference": "–", "95% CI": "–", "p": "–", "seeds": 0, "test": "not measured",
                "verdict": "not measured", "diff": math.nan, "lo": math.nan, "hi": math.nan, "p_value": math.nan,
                "run_ids": ""}
    m = transform() if transform is not None else match(a, b, predictions)
    if notes is not None:
        notes.extend(m.notes)
    if not m.seeds or not m.ids:
        return {**_row(claim, None, None, predictions), **base, "test": "no paired predictions"}
    cmp = S.paired_comparison(m.a, m.b, seeds=m.seeds)
    if transform is not None:  # McNemar needs 0/1 rows; a transformed (difference-of-differences) row has none
        cmp = S.Comparison(cmp.estimate, cmp.test.replace("McNemar exact, 1 seed", "paired bootstrap, 1 seed"),
                           cmp.seeds)
    e = cmp.estimate
    return {**base, "difference": f"{100 * e.value:+.1f}", "95% CI": f"[{100 * e.lo:+.1f}, {100 * e.hi:+.1f}]",
            "p": S.format_p(e.p), "seeds": len(m.seeds), "test": cmp.test,
            "verdict": S.verdict(e, relation, MARGIN), "diff": e.value, "lo": e.lo, "hi": e.hi, "p_value": e.p,
            "run_ids": ",".join(m.run_ids)}


def _arm(groups: Mapping[Any, list[dict[str, Any]]], key: Any, label: str) -> Arm | None:
    runs = groups.get(key)
    return Arm(label, list(runs)) if runs else None


def claims_table(runs: pd.DataFrame, predictions: PredictionCache,
                 loops: LoopIterations | None = None) -> pd.DataFrame:
    """The paper's claims, each as a paired comparison with difference, CI, p-value and verdict."""
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    pts = fig2_points(runs)
    fig2 = pts.attrs.get("groups", {})
    datas = sorted({k[0] for k in fig2})
    several = len(datas) > 1
    for d in datas:
        on = f" on {d}" if several else ""
        ks = sorted({k[2] for k in fig2 if k[0] == d and k[2] is not None})
        for series, name in (("TopK", "TopK"), ("TopK (type x answer x letter)", "TopK matched")):
            for k in ks:
                if (d, series, k) in fig2 and (d, "RandK", k) in fig2:
                    rows.append(_row(f"{name} > RandK at K={k:,}{on}", _arm(fig2, (d, "RandK", k), f"randk k={k}"),
                                     _arm(fig2, (d, series, k), f"{name.lower().replace(' ', '_')} k={k}"),
                                     predictions, ">", notes))
            if name == "TopK" or (d, series, 2000) in fig2:
                rows.append(_row(f"{name}@2,000 ≥ Rand-all{on}", _arm(fig2, (d, "Rand-all", None), "rand_all"),
                                 _arm(fig2, (d, series, 2000), f"{name.lower().replace(' ', '_')} k=2000"),
                                 predictions, ">=", notes))
        grpo_ks = [k for k in ks if (d, "TopK", k) in fig2 and (d, "TopK+GRPO", k) in fig2]
        for k in grpo_ks:
            rows.append(_row(f"GRPO gain at K={k:,}{on}", _arm(fig2, (d, "TopK", k), f"topk k={k}"),
                             _arm(fig2, (d, "TopK+GRPO", k), f"topk_grpo k={k}"), predictions, ">", notes))
        if len(grpo_ks) >= 2:
            rows.append(_grpo_small_k(fig2, d, grpo_ks[0], grpo_ks[-1], predictions, notes, on))
    t2 = table2(runs).attrs.get("groups", {})
    for d in sorted({k[1] for k in t2}) or ["?"]:
        on = f" on {d}" if len({k[1] for k in t2}) > 1 else ""
        rows.append(_row(f"rewarded SFT > raw SFT{on}", _arm(t2, ("SFT raw", d), "sft_raw"),
                         _arm(t2, ("SFT rewarded", d), "sft_rewarded"), predictions, ">", notes))
        # Table 2's +GRPO row is its own claim (85.56 -> 87.45 in the paper): GRPO after rewarded SFT helps.
        rows.append(_row(f"GRPO after rewarded SFT > rewarded SFT (Table 2){on}",
                         _arm(t2, ("SFT rewarded", d), "sft_rewarded"), _arm(t2, ("+GRPO", d), "grpo"),
                         predictions, ">", notes))
    rows.extend(_loop_rows(runs, loops, predictions, notes))
    rows.append(_transfer_row(runs, predictions, notes))
    from medgr2.report.rl_gain import claims_rows  # RQ3: SFT+GRPO minus SFT in the cross-domain GRPO recipes

    rows.extend(claims_rows(runs, MARGIN))
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["seeds"] = df["seeds"].astype("Int64")
    df.attrs = {"notes": notes}
    return df


def _grpo_small_k(fig2, d: str, small: int, large: int, predictions: PredictionCache, notes: list[str],
                  on: str) -> dict[str, Any]:
    """(GRPO gain at the smallest K) - (at the largest K), seed-matched over all four arms."""
    t_s, g_s = _arm(fig2, (d, "TopK", small), f"topk k={small}"), _arm(fig2, (d, "TopK+GRPO", small), "")
    t_l, g_l = _arm(fig2, (d, "TopK", large), f"topk k={large}"), _arm(fig2, (d, "TopK+GRPO", large), "")
    claim = f"GRPO helps most at small K (gain at K={small:,} > at K={large:,}){on}"
    small_arm = Arm(f"gain at K={small:,}", [])
    large_arm = Arm(f"gain at K={large:,}", [])
    seeds = sorted(set.intersection(*(set(x.seeds) for x in (t_s, g_s, t_l, g_l))))  # type: ignore[union-attr]
    parts = {}
    for name, x in (("ts", t_s), ("gs", g_s), ("tl", t_l), ("gl", g_l)):
        parts[name] = {seed_of(r): r for r in x.runs}  # type: ignore[union-attr]
    mats: dict[str, list[pd.Series]] = {k: [] for k in parts}
    used_seeds = []
    for s in seeds:
        got = {k: predictions.correct(parts[k][s]["run_id"]) for k in parts}
        if any(v is None for v in got.values()):
            notes.append(f"{claim}: seed {s} lacks predictions in one of the four arms; left out.")
            continue
        used_seeds.append(s)
        for k, v in got.items():
            mats[k].append(v)
    if not used_seeds:
        return _row(claim, None, None, predictions)
    ids = sorted(set.intersection(*(set(v.index) for vs in mats.values() for v in vs)))

    def m(k: str) -> np.ndarray:
        return np.stack([v.loc[ids].to_numpy(float) for v in mats[k]])  # [seeds, questions]

    # b - a = (G_s - T_s) - (G_l - T_l): a per-question difference of differences, paired on questions
    b, a = m("gs") + m("tl"), m("ts") + m("gl")
    run_ids = [parts[k][s]["run_id"] for s in used_seeds for k in parts]
    matched = Matched(used_seeds, a, b, ids, run_ids)
    small_arm.runs, large_arm.runs = [parts["gs"][s] for s in used_seeds], [parts["gl"][s] for s in used_seeds]
    return _row(claim, large_arm, small_arm, predictions, ">", None, transform=lambda: matched)


def _loop_rows(runs: pd.DataFrame, loops: LoopIterations | None, predictions: PredictionCache,
               notes: list[str]) -> list[dict[str, Any]]:
    """The loop improves: its final policy against iteration 0's, per recipe with >= 2 iterations."""
    recs = [r for r in eval_records(runs, "claims", []) if tag(r, "stage") == "loop"
            and (as_int(tag(r, "iterations")) or 1) >= 2]
    if not recs or loops is None:
        return [_row("the loop improves across iterations", None, None, predictions)]
    groups = latest_by(recs, lambda r: (tag(r, "experiment"), tag(r, "data"), sweep_of(r)), "claims", notes)
    # Label each loop by its recipe and only the sweep items that tell the loops apart (full lists are long)
    common = set.intersection(*(set(k[2].split()) for k in groups)) if groups else set()
    out = []
    for (exp, _data, sweep), top in groups.items():
        n_it = as_int(tag(top[0], "iterations")) or 2
        first = [loops.step_run(r["run_id"], 0) for r in top]
        pairs = [(f, r) for f, r in zip(first, top, strict=True) if f is not None]
        label = " ".join([exp or "?", *(i for i in sweep.split() if i not in common)])
        if len(pairs) < len(top):
            notes.append(f"loop {label}: {len(top) - len(pairs)} run(s) without an iteration-0 step run; left out.")
        a = Arm(f"{label} iteration 0", [{**f, "tags.seed": seed_of(r)} for f, r in pairs]) if pairs else None
        b = Arm(f"{label} iteration {n_it - 1}", [r for _, r in pairs]) if pairs else None
        out.append(_row(f"the loop improves across iterations ({label})", a, b, predictions, ">", notes))
    return out


def _transfer_row(runs: pd.DataFrame, predictions: PredictionCache, notes: list[str]) -> dict[str, Any]:
    """Cross-modality transfer: a model trained on one modality beats the untrained base (``zero_shot``) on the
    other modalities' test questions (every source, every off-diagonal question, seed-matched)."""
    claim = "cross-modality transfer (trained on one modality > base on the others)"
    mat = transfer_matrix(runs, "modality")
    groups = mat.attrs.get("groups", {})
    base = table2(runs).attrs.get("groups", {})
    base_runs = next((v for k, v in base.items() if k[0] == "base"), None)
    if not groups or not base_runs:
        return _row(claim, None, None, predictions)
    base_run = base_runs[0]  # greedy decoding of an untrained base: the same on every seed
    base_c = predictions.correct(base_run["run_id"])
    mods = predictions.modality(base_run["run_id"])
    if base_c is None or mods is None:
        return _row(claim, None, None, predictions)
    seeds = sorted(set.intersection(*({seed_of(r) for r in rs} for rs in groups.values())))
    a_rows, b_rows, used = [], [], []
    for s in seeds:
        a_s, b_s = [], []
        for (_data, src), rs in sorted(groups.items()):
            r = next(r for r in rs if seed_of(r) == s)
            c = predictions.correct(r["run_id"])
            if c is None:
                continue
            ids = sorted(i for i in set(c.index) & set(base_c.index) if mods.get(i) != src)
            a_s.append(base_c.loc[ids].to_numpy(float))
            b_s.append(c.loc[ids].to_numpy(float))
            used.append(r["run_id"])
        if a_s:
            a_rows.append(np.concatenate(a_s))
            b_rows.append(np.concatenate(b_s))
    if not a_rows or len({len(x) for x in a_rows}) != 1:
        notes.append(f"{claim}: the seeds' off-diagonal questions differ; not measured.")
        return _row(claim, None, None, predictions)
    kept = seeds[: len(a_rows)]
    matched = Matched(kept, np.stack(a_rows), np.stack(b_rows), [str(i) for i in range(len(a_rows[0]))],
                      [base_run["run_id"], *used])
    a = Arm("zero_shot (base)", [{**base_run, "tags.seed": s} for s in kept])
    b = Arm("cross_modality, off-diagonal", [{"run_id": u, "tags.seed": s} for u, s in zip(used, kept, strict=False)])
    return _row(claim, a, b, predictions, ">", None, transform=lambda: matched)


def claims_markdown(table: pd.DataFrame) -> str:
    """The claims table as Markdown (numeric helper columns hidden)."""
    from medgr2.report.render import to_markdown

    return to_markdown(table, percent=False, hide=HIDDEN)


__all__ = ["Arm", "CLAIMS_INTRO", "LoopIterations", "claims_markdown", "claims_table", "compare",
           "format_comparison", "match", "resolve_arm"]
