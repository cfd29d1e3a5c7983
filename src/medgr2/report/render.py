"""Render report tables as Markdown, LaTeX (booktabs) and CSV.

Floats are fractions in the tables; Markdown and LaTeX print them as percent with two decimals (``percent``),
CSV keeps the exact values. Integers (K, counts) print as integers, missing values as ``–``.
Two-level column headers (Table 2: eval set, metric) become ``set metric`` in Markdown, ``set/metric`` in CSV
and a ``\\multicolumn`` header row in LaTeX.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

MISSING = "–"


def fmt(value, percent: bool = True, digits: int = 2) -> str:
    """One cell: percent for floats (when ``percent``), plain integers, ``–`` for missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        return f"{100 * v:.{digits}f}" if percent else f"{v:.{digits + 2}f}"
    return str(value)


def with_intervals(df: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Display copy: every column ``X`` with sibling columns ``X lo`` and ``X hi`` becomes the text
    ``mean ± half-width`` in percent (``80.30 ± 1.20``; just the mean when the interval is unknown) and the two
    siblings go. CSV files keep the numeric columns."""
    out = df.copy()
    multi = isinstance(out.columns, pd.MultiIndex)
    for col in list(out.columns):
        name = col[-1] if multi else col
        lo = (*col[:-1], f"{name} lo") if multi else f"{name} lo"
        hi = (*col[:-1], f"{name} hi") if multi else f"{name} hi"
        if lo not in out.columns or hi not in out.columns:
            continue
        cells = []
        for v, a, b in zip(out[col], out[lo], out[hi], strict=True):
            mean = fmt(v, True, digits)
            half = (float(b) - float(a)) / 2 if not (pd.isna(a) or pd.isna(b)) else math.nan
            cells.append(mean if math.isnan(half) or mean == MISSING else f"{mean} ± {100 * half:.{digits}f}")
        out[col] = pd.Series(cells, index=out.index, dtype=object)
        out = out.drop(columns=[lo, hi])
    return out


def _visible(df: pd.DataFrame, hide: Sequence[str]) -> pd.DataFrame:
    drop = [c for c in df.columns if (c[-1] if isinstance(c, tuple) else c) in hide]
    return df.drop(columns=drop)


def _header(col, sep: str = " ") -> str:
    return sep.join(str(p) for p in col if str(p)) if isinstance(col, tuple) else str(col)


def to_markdown(df: pd.DataFrame, *, index: bool = True, percent: bool = True,
                hide: Sequence[str] = ("run_id",), digits: int = 2) -> str:
    """A GitHub pipe table; ``hide`` drops columns (by last header level), ``index`` prints the index first."""
    view = _visible(df, hide)
    if view.empty and not len(view.index):
        return "_no rows_"
    show_index = index and not isinstance(view.index, pd.RangeIndex)
    heads = ([str(view.index.name or "")] if show_index else []) + [_header(c) for c in view.columns]
    esc = [h.replace("|", "\\|") for h in heads]
    lines = ["| " + " | ".join(esc) + " |", "|" + "---|" * len(heads)]
    for idx, row in zip(view.index, view.itertuples(index=False), strict=True):
        cells = ([str(idx)] if show_index else []) + [fmt(v, percent, digits) for v in row]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "–": "--",
                  "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(df: pd.DataFrame, *, caption: str | None = None, label: str | None = None, index: bool = True,
             percent: bool = True, hide: Sequence[str] = ("run_id",), digits: int = 2) -> str:
    """A ``table`` with a booktabs ``tabular``; needs ``\\usepackage{booktabs}``."""
    view = _visible(df, hide)
    show_index = index and not isinstance(view.index, pd.RangeIndex)
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + ("l" * int(show_index))
             + "".join("l" if view[c].dtype == object or pd.api.types.is_string_dtype(view[c]) else "r"
                       for c in view.columns) + "}", r"\toprule"]
    if isinstance(view.columns, pd.MultiIndex) and len(view.columns):
        groups: list[tuple[str, int]] = []
        for c in view.columns:
            if groups and groups[-1][0] == c[0]:
                groups[-1] = (c[0], groups[-1][1] + 1)
            else:
                groups.append((c[0], 1))
        head = ([""] if show_index else []) + [rf"\multicolumn{{{n}}}{{c}}{{{latex_escape(g)}}}" for g, n in groups]
        lines.append(" & ".join(head) + r" \\")
        start = 1 + int(show_index)
        rules = []
        for _g, n in groups:
            rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
            start += n
        lines.append(" ".join(rules))
        names = [str(c[-1]) for c in view.columns]
    else:
        names = [_header(c) for c in view.columns]
    lines.append(" & ".join(([latex_escape(view.index.name or "")] if show_index else [])
                            + [latex_escape(n) for n in names]) + r" \\")
    lines.append(r"\midrule")
    for idx, row in zip(view.index, view.itertuples(index=False), strict=True):
        cells = ([latex_escape(idx)] if show_index else []) + [latex_escape(fmt(v, percent, digits)) for v in row]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + latex_escape(caption) + "}")
    if label:
        lines.append(r"\label{" + label + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_csv(df: pd.DataFrame, path: str | Path, *, index: bool = True) -> Path:
    """Exact values (fractions, not percent); two-level headers joined with ``/``."""
    out = df.copy()
    if isinstance(out.columns, pd.MultiIndex):
        out.columns = [_header(c, "/") for c in out.columns]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=index and not isinstance(out.index, pd.RangeIndex))
    return path
