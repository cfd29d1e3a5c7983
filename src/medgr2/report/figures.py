"""Figures 2, 4 and 5 of the paper from the tables in :mod:`medgr2.report.figure_data`.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global state, no
display needed; PNGs are written by the Agg canvas), so the same objects show inline in a notebook.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from medgr2.report.figure_data import FIG2_REFERENCE, FIG2_SERIES, TRANSITIONS

SERIES_STYLE = {"RandK": ("tab:gray", "o", "--"), "TopK": ("tab:blue", "s", "-"),
                "TopK+GRPO": ("tab:red", "^", "-"), "TopK (stratified)": ("tab:green", "D", ":"),
                "TopK (type x answer)": ("tab:orange", "v", ":"),
                "TopK (type x answer x letter)": ("tab:purple", "P", "-"),
                "TopK+GRPO (match reward)": ("tab:brown", "*", ":"),
                "TopK+GRPO (match reward, train questions)": ("tab:brown", "*", "-")}
TRANSITION_STYLE = {  # paper Figure 5 colours
    "correct_to_correct": ("Correct→Correct", "#2ca02c"),
    "wrong_to_correct": ("Wrong→Correct", "#1f77b4"),
    "correct_to_wrong": ("Correct→Wrong", "#ff7f0e"),
    "wrong_to_wrong": ("Wrong→Wrong", "#d62728"),
}


def save_png(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` as a PNG (Agg) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _empty(fig: Figure, text: str) -> Figure:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def _bounds(points: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``acc lo`` / ``acc hi`` as arrays; the point itself where the interval is unknown (no bar)."""
    acc = points["acc"].to_numpy(dtype=float)
    lo = points["acc lo"].to_numpy(dtype=float) if "acc lo" in points else acc
    hi = points["acc hi"].to_numpy(dtype=float) if "acc hi" in points else acc
    return np.where(np.isfinite(lo), lo, acc), np.where(np.isfinite(hi), hi, acc)


def _seeds_note(points: pd.DataFrame) -> str:
    """`` (n=3 seeds)`` / `` (1–3 seeds)`` for a legend entry."""
    if "seeds" not in points or points["seeds"].isna().all():
        return ""
    n = points["seeds"].dropna().astype(int)
    lo, hi = int(n.min()), int(n.max())
    return f" ({lo} seed{'s' if hi > 1 else ''})" if lo == hi else f" ({lo}–{hi} seeds)"


def plot_fig2(points: pd.DataFrame) -> Figure:
    """Test accuracy (%) vs K on a log2 axis, one curve per series with 95% error bars, Rand-all as a
    horizontal line with its interval as a band; one panel per data set."""
    datas = sorted(points["data"].unique()) if not points.empty else []
    fig = Figure(figsize=(5.5 * max(1, len(datas)), 4.0), layout="constrained")
    if not datas:
        return _empty(fig, "Figure 2: no RandK / TopK / TopK+GRPO / Rand-all runs")
    axes = fig.subplots(1, len(datas), squeeze=False)[0]
    ref_name = FIG2_REFERENCE[1]
    for ax, data in zip(axes, datas, strict=True):
        sub = points[points["data"] == data]
        ks = sorted({int(k) for k in sub.loc[sub["series"] != FIG2_REFERENCE[1], "k"].dropna()})
        present = [n for n in FIG2_SERIES.values() if not sub[sub["series"] == n].dropna(subset=["k"]).empty]
        for name in FIG2_SERIES.values():
            s = sub[sub["series"] == name].dropna(subset=["k"]).sort_values("k")
            if s.empty:
                continue
            # Dodge: each series a little to the side on the log axis, so error bars at one K do not overlap
            dodge = 2 ** (0.03 * (present.index(name) - (len(present) - 1) / 2))
            color, marker, style = SERIES_STYLE.get(name, (None, "o", "-"))
            lo, hi = _bounds(s)
            # Error bars: the 95% interval of each point (seeds and test questions; docs/statistics.md)
            ax.errorbar(s["k"].astype(int) * dodge, 100 * s["acc"], yerr=100 * np.vstack([s["acc"] - lo, hi - s["acc"]]),
                        marker=marker, linestyle=style, color=color, label=name + _seeds_note(s), capsize=3)
        for _, r in sub[sub["series"] == ref_name].iterrows():
            k = r["k"]
            lab = ref_name + (f" (K={int(k)})" if not pd.isna(k) else "") + _seeds_note(pd.DataFrame([r]))
            ax.axhline(100 * r["acc"], color="black", linestyle=":", label=lab)
            lo, hi = _bounds(pd.DataFrame([r]))
            if np.isfinite(lo[0]) and np.isfinite(hi[0]) and hi[0] > lo[0]:
                ax.axhspan(100 * lo[0], 100 * hi[0], color="black", alpha=0.08)
        ax.set_xscale("log", base=2)
        if ks:
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.minorticks_off()
            if len(ks) == 1:  # one K: keep the dodged bars close, as they would be among several Ks
                ax.set_xlim(ks[0] / 2, ks[0] * 2)
        ax.set_xlabel("K (training samples, log2)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Accuracy vs K — {data}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def plot_transfer(matrix: pd.DataFrame, title: str, center: float | None = None, value_label: str = "test accuracy (%)",
                  center_label: str = "chance", center_unit: str = "%", symmetric: bool = False) -> Figure:
    """Heatmap of a transfer matrix (fractions shown in %, annotated); warm above ``center`` (e.g. chance), cool
    below. ``symmetric``: a linear colour scale as far below ``center`` as above it (for differences, so equal
    colours mean equal magnitudes); otherwise each side is stretched to its own extreme."""
    n_rows, n_cols = matrix.shape
    fig = Figure(figsize=(3.0 + 1.1 * max(n_cols, 3), 2.2 + 0.6 * max(n_rows, 2)), layout="constrained")
    if matrix.empty:
        return _empty(fig, f"{title}: no runs")
    ax = fig.add_subplot()
    values = 100 * matrix.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    c = None if center is None else 100 * center
    if c is not None and symmetric:
        m = max(abs(lo - c), abs(hi - c), 1e-6)
        norm = Normalize(vmin=c - m, vmax=c + m)
    elif c is not None:
        norm = TwoSlopeNorm(vcenter=c, vmin=min(lo, c - 1e-6), vmax=max(hi, c + 1e-6))
    else:
        norm = Normalize(vmin=lo, vmax=hi)
    cmap = colormaps["coolwarm"].with_extremes(bad="lightgray")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(n_cols), [str(x) for x in matrix.columns], rotation=30, ha="right")
    ax.set_yticks(range(n_rows), [str(x) for x in matrix.index])
    ax.set_xlabel(str(matrix.columns.name or "test"))
    ax.set_ylabel(str(matrix.index.name or "train source"))
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            ax.text(j, i, "–" if math.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=8)
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label(value_label)
    ax.set_title(title + (f"\n(colour centre: {center_label} {c:.1f}{center_unit})" if c is not None else ""), fontsize=10)
    return fig


def plot_transitions(trans: pd.DataFrame, baseline: str = "baseline", compare: str = "compare") -> Figure:
    """Stacked bars per modality: share (%) of questions in each transition from ``baseline`` to ``compare``;
    the ``All`` row comes last."""
    fig = Figure(figsize=(1.5 + 0.8 * max(len(trans), 3), 4.2), layout="constrained")
    if trans.empty:
        return _empty(fig, "Figure 5: no joined predictions")
    ax = fig.add_subplot()
    n = trans["n"].to_numpy(dtype=float)
    share = np.divide(100 * trans[list(TRANSITIONS)].to_numpy(dtype=float), n[:, None],
                      out=np.zeros((len(trans), len(TRANSITIONS))), where=n[:, None] > 0)
    x = np.arange(len(trans))
    bottom = np.zeros(len(trans))
    for j, key in enumerate(TRANSITIONS):
        label, color = TRANSITION_STYLE[key]
        ax.bar(x, share[:, j], bottom=bottom, color=color, label=label, width=0.7)
        for i in range(len(trans)):
            if share[i, j] >= 8:
                ax.text(x[i], bottom[i] + share[i, j] / 2, str(int(trans.iloc[i][key])), ha="center",
                        va="center", fontsize=7, color="white")
        bottom += share[:, j]
    ax.set_xticks(x, [f"{m}\n(n={int(k)})" for m, k in zip(trans.index, trans["n"], strict=True)], fontsize=8)
    ax.set_ylabel("share of questions (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Error transitions: {baseline} → {compare}", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4)
    return fig
