"""The text of ``report.md``: the summary, each section (tables inline, figures embedded), runs used, skipped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from medgr2.report import claims as C
from medgr2.report.render import to_markdown, with_intervals

if TYPE_CHECKING:
    from medgr2.report.build import Report

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
