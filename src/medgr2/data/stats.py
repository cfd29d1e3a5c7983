"""Summary statistics of a set of VQA records, and a readable text rendering of them.

Works on plain lists of record dicts and on ``datasets.Dataset`` objects; for the latter the
``image`` column is dropped before iterating so no image is ever decoded just to be counted.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import datasets
from rich.console import Console
from rich.table import Table

from medgr2.data.schema import LETTERS, MODALITIES, QUESTION_TYPES, SPLITS

__all__ = ["dataset_stats", "format_stats"]

# Columns the statistics read; selecting only these keeps Arrow from materialising anything else.
_STAT_COLUMNS = ("modality", "question_type", "options", "answer", "split", "dataset")


def _rows(records: Iterable[Mapping[str, Any]] | datasets.Dataset) -> Iterable[Mapping[str, Any]]:
    if isinstance(records, datasets.Dataset):
        cols = [c for c in records.column_names if c in _STAT_COLUMNS]
        return records.select_columns(cols)
    return records


def _ordered(counter: Counter[Any], order: Iterable[Any] = ()) -> dict[Any, int]:
    """Counter -> dict with the canonical order first, then any other keys sorted (as strings)."""
    order = [k for k in order if k in counter]
    rest = sorted((k for k in counter if k not in order), key=str)
    return {k: counter[k] for k in [*order, *rest]}


def dataset_stats(records: Iterable[Mapping[str, Any]] | datasets.Dataset) -> dict[str, Any]:
    """Count records by modality x question type, option count, answer letter, split and data set.

    Returns a JSON-serialisable dict::

        {"total": int,
         "modality_question_type": {modality: {question_type: n}},
         "modality": {modality: n}, "question_type": {question_type: n},
         "option_count": {n_options: n}, "answer": {letter: n},
         "split": {split: n}, "dataset": {name: n}}

    Canonical values come first in schema order; unexpected values are kept (sorted after them) rather
    than dropped, since spotting them is part of why one looks at statistics.
    """
    total = 0
    cross: dict[str, Counter[str]] = {}
    by_mod: Counter[str] = Counter()
    by_qt: Counter[str] = Counter()
    n_opts: Counter[int] = Counter()
    answers: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    dsets: Counter[str] = Counter()
    for row in _rows(records):
        total += 1
        mod = str(row.get("modality") or "")
        qt = str(row.get("question_type") or "")
        cross.setdefault(mod, Counter())[qt] += 1
        by_mod[mod] += 1
        by_qt[qt] += 1
        n_opts[len(row.get("options") or [])] += 1
        answers[str(row.get("answer") or "").strip().upper()] += 1
        splits[str(row.get("split") or "")] += 1
        dsets[str(row.get("dataset") or "")] += 1
    mod_order = _ordered(by_mod, MODALITIES)
    return {
        "total": total,
        "modality_question_type": {m: _ordered(cross[m], QUESTION_TYPES) for m in mod_order},
        "modality": mod_order,
        "question_type": _ordered(by_qt, QUESTION_TYPES),
        "option_count": dict(sorted(n_opts.items())),
        "answer": _ordered(answers, LETTERS),
        "split": _ordered(splits, SPLITS),
        "dataset": dict(sorted(dsets.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _short_qtype(name: str) -> str:
    """Column headers: "Anatomy Identification" -> "Anatomy Ident." keeps the cross table within 120 columns."""
    words = name.split()
    return name if len(name) <= 12 else " ".join([words[0], *(w[:5] + "." for w in words[1:])])


def _count_table(title: str, counts: Mapping[Any, int], key_name: str, total: int) -> Table:
    table = Table(title=title, title_justify="left", show_footer=False)
    table.add_column(key_name)
    table.add_column("n", justify="right")
    table.add_column("%", justify="right")
    for key, n in counts.items():
        table.add_row(
            str(key) if key != "" else "(empty)", str(n), f"{100.0 * n / total:.1f}" if total else "-"
        )
    return table


def _reason_table(title: str, counts: Mapping[str, int], examples: Mapping[str, list[str]] | None) -> Table:
    """reason | n | first example, most frequent first."""
    table = Table(title=title, title_justify="left")
    table.add_column("reason")
    table.add_column("n", justify="right")
    if examples:
        table.add_column("first example", overflow="fold")
    for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        cells = [reason, str(n)]
        if examples:
            cells.append((examples.get(reason) or [""])[0])
        table.add_row(*cells)
    return table


def format_stats(
    stats: Mapping[str, Any],
    skipped: Mapping[str, int] | None = None,
    *,
    examples: Mapping[str, list[str]] | None = None,
    warnings: Mapping[str, int] | None = None,
    warning_examples: Mapping[str, list[str]] | None = None,
    width: int = 120,
    max_datasets: int = 20,
) -> str:
    """Render :func:`dataset_stats` output (and optional skip counts) as plain-text tables.

    Args:
        stats: the dict returned by :func:`dataset_stats`.
        skipped: reason -> count of items that were not loaded (e.g. ``LoadResult.skipped``).
        examples: reason -> messages; the first one per reason is shown next to its count.
        warnings: reason -> count of files or items loaded despite a problem (``LoadResult.warnings``,
            e.g. ``non_utf8_json``); shown in their own table because nothing was lost.
        warning_examples: reason -> messages, like ``examples``.
        width: text width of the rendering.
        max_datasets: show at most this many data sets (largest first), summing the rest.

    Returns:
        The rendered text (no ANSI colour codes), suitable for logs and files.
    """
    # record=True + a StringIO file: render off-screen and hand the text back instead of printing it.
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None, force_terminal=False)
    total = int(stats.get("total", 0))
    console.print(f"Records: {total}")

    cross: Mapping[str, Mapping[str, int]] = stats.get("modality_question_type", {})
    qtypes = list(stats.get("question_type", {}))
    table = Table(title="Modality x question type", title_justify="left")
    table.add_column("modality")
    for qt in qtypes:
        table.add_column(_short_qtype(qt), justify="right")
    table.add_column("total", justify="right")
    for mod, row in cross.items():
        table.add_row(mod or "(empty)", *(str(row.get(qt, 0)) for qt in qtypes), str(sum(row.values())))
    table.add_row("total", *(str(stats["question_type"][qt]) for qt in qtypes), str(total), end_section=True)
    console.print(table)

    for key, title, key_name in (
        ("split", "Splits", "split"),
        ("option_count", "Options per question", "options"),
        ("answer", "Answer letters", "answer"),
    ):
        console.print(_count_table(title, stats.get(key, {}), key_name, total))

    dsets: Mapping[str, int] = stats.get("dataset", {})
    if dsets:
        shown = dict(list(dsets.items())[:max_datasets])
        rest = list(dsets.items())[max_datasets:]
        if rest:
            shown[f"(+{len(rest)} more)"] = sum(n for _, n in rest)
        console.print(_count_table("Data sets", shown, "dataset", total))

    if skipped is not None:
        console.print(_reason_table(f"Skipped: {sum(skipped.values())}", skipped, examples))
    if warnings:
        console.print(_reason_table(f"Loaded with warnings: {sum(warnings.values())}", warnings, warning_examples))
    return console.export_text()


def format_leakage(leakage: Mapping[str, Any], attributes: Mapping[str, int] | None = None, *,
                   filtered: Mapping[str, int] | None = None, width: int = 120) -> str:
    """Render a train/test leakage report (:meth:`medgr2.data.leakage.Leakage.as_dict`) and, for the Med-R1
    layout, where each attribute came from (``LoadResult.attributes``) as plain-text tables.

    Args:
        leakage: counts of images shared by the train and test sides, by path and by content.
        attributes: ``"<field> <- <source>"`` -> records; omitted when empty.
        filtered: ``LoadResult.filtered``; its ``image_disjoint`` count is shown under the leakage table.
        width: text width of the rendering.
    """
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None, force_terminal=False)
    if attributes:
        table = Table(title="Attributes: where each value came from", title_justify="left")
        table.add_column("field <- source")
        table.add_column("records", justify="right")
        for key, n in sorted(attributes.items()):
            table.add_row(key, str(n))
        console.print(table)
    table = Table(title="Train/test image leakage", title_justify="left")
    table.add_column("count")
    table.add_column("n", justify="right")
    labels = {"train_images": "train images", "test_images": "test images",
              "shared_by_path": "images shared, by path", "shared_by_content": "images shared, by content (SHA-256)",
              "train_questions": "train questions about a shared image",
              "test_questions": "test questions about a shared image"}
    for key, label in labels.items():
        table.add_row(label, str(leakage.get(key, 0)))
    console.print(table)
    shared = max(int(leakage.get("shared_by_path", 0)), int(leakage.get("shared_by_content", 0)))
    removed = int((filtered or {}).get("image_disjoint", 0))
    if removed:
        console.print(f"data.image_disjoint=true removed {removed} training questions about test images.")
    elif shared:
        console.print(f"WARNING: {shared} images are in both the train and the test split; "
                      "data.image_disjoint=true removes their training questions. Examples: "
                      + ", ".join(leakage.get("examples") or []))
    return console.export_text()
