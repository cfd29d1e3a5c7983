"""Streaming selection of scored candidates (paper Algorithm 1, lines 5–9): threshold τ, TopK, RandK, all.

:func:`select` checks the settings against the pool and runs one of the streaming algorithms of
:mod:`medgr2.data.selection_algorithms` (TopK / RandK in O(k) memory, optionally stratified; threshold / all).
The pool is read in Arrow batches through :mod:`medgr2.data.pools` and never loaded; dedupe keys come from
:mod:`medgr2.data.dedupe`; :func:`medgr2.data.rows.save_rows` writes the selected rows.

Dedupe (``allow_overlap=False``) drops candidates whose :func:`~medgr2.data.dedupe.dedupe_key` (image +
normalised question) is in ``exclude_keys`` (the items of the existing D_gen) and keeps one candidate per key
within the pool: the one with the higher score (ties: smaller id).

Ordering of the returned ids: TopK best first; RandK in hash order; threshold / all in pool order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medgr2.data.pools import DEFAULT_BATCH_SIZE, SCORE_HINT, SelectionError, open_pool
from medgr2.data.selection_algorithms import (
    SelectionResult,
    select_bounded,
    select_stratified,
    select_unbounded,
)

METHODS: tuple[str, ...] = ("threshold", "topk", "randk", "all")
#: The reward model's grade scale (hallucinated −6 … original 10): a τ outside it selects all or nothing.
TAU_RANGE: tuple[float, float] = (-6.0, 10.0)


def check_settings(method: str, k: Any, tau: Any, n_pool: int | None = None, allow_fewer: bool = False) -> None:
    """Raise :class:`SelectionError` naming the setting when ``k`` / ``tau`` cannot work for ``method``
    (``n_pool``: the pool's size when known, for the ``k`` larger than the pool check)."""
    if method not in METHODS:
        raise SelectionError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    if method in ("topk", "randk"):
        if k is None:
            raise SelectionError(f"select={method} needs k (e.g. k=2000)")
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise SelectionError(f"k must be a positive integer, got {k!r}")
        if k <= 0:
            raise SelectionError(f"k must be a positive integer, got k={k}")
        if n_pool is not None and k > n_pool and not allow_fewer:
            raise SelectionError(
                f"k={k} is larger than the pool ({n_pool} candidates): lower k, generate more candidates, "
                f"or pass select.allow_fewer=true to select all {n_pool}"
            )
    if method == "threshold":
        if tau is None:
            raise SelectionError("select=threshold needs tau (e.g. tau=5.0)")
        if isinstance(tau, bool) or not isinstance(tau, int | float | np.number):
            raise SelectionError(f"tau must be a number in [{TAU_RANGE[0]}, {TAU_RANGE[1]}], got {tau!r}")
        if not TAU_RANGE[0] <= float(tau) <= TAU_RANGE[1]:  # NaN fails this too
            raise SelectionError(
                f"tau={tau} is outside the reward scale [{TAU_RANGE[0]:g}, {TAU_RANGE[1]:g}]: it would select "
                "everything or nothing"
            )


def select(
    pool: Any,
    method: str,
    k: int | None = None,
    tau: float | None = None,
    seed: int = 0,
    exclude_keys: set[str] | None = None,
    *,
    allow_overlap: bool = True,
    allow_fewer: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    stratify: str | Sequence[str] | None = None,
) -> SelectionResult:
    """Select from a scored candidate pool, streaming in ``batch_size`` rows.

    ``method``: ``topk`` (the ``k`` highest scores, ties by smaller id), ``randk`` (``k`` uniformly at
    random, deterministic per ``seed``), ``threshold`` (every candidate with score > ``tau``, strictly —
    Algorithm 1 line 5), ``all``. ``allow_overlap=False`` removes candidates whose
    :func:`~medgr2.data.dedupe.dedupe_key` is in ``exclude_keys`` (D_gen's keys, see
    :func:`~medgr2.data.dedupe.pool_dedupe_keys`) and duplicates within the pool (the
    higher score stays). ``k`` larger than the pool, or than what is left after dedupe, raises
    :class:`SelectionError` unless ``allow_fewer``. Null/NaN scores are never selected by topk/threshold.
    ``stratify``: a column (e.g. ``question_type``), or several (``[question_type, answer_text]``: their value
    combinations), over whose values TopK / RandK split ``k`` evenly
    (:func:`~medgr2.data.selection_algorithms.stratum_quotas`).
    """
    if method not in METHODS:
        raise SelectionError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    p = open_pool(pool)
    if "id" not in p.column_names:
        raise SelectionError(f"the pool has no 'id' column (columns: {p.column_names})")
    has_score = "score" in p.column_names
    if method in ("topk", "threshold") and not has_score:
        raise SelectionError(f"select={method} ranks by reward, but the pool has no 'score' column: {SCORE_HINT}")
    check_settings(method, k, tau, p.num_rows, allow_fewer)
    if exclude_keys and allow_overlap:
        raise SelectionError("exclude_keys (dedupe against D_gen) needs allow_overlap=False")
    dedupe = not allow_overlap
    if dedupe:
        lacking = [c for c in ("image", "question") if c not in p.column_names]
        if lacking:
            raise SelectionError(f"allow_overlap=false needs the columns image and question; missing {lacking}")
    columns = ["id"] + (["score"] if has_score else []) + (["image", "question"] if dedupe else [])
    if dedupe:
        # Image bytes are read in these batches: keep a batch's transient footprint small.
        batch_size = min(batch_size, 1024)
    result = SelectionResult(method=method, n_pool=p.num_rows)
    exclude = exclude_keys or set()
    if stratify and method not in ("topk", "randk"):
        raise SelectionError(f"select.stratify works with topk and randk, not {method}")
    strata_cols = [stratify] if isinstance(stratify, str) else list(stratify or [])
    missing = [c for c in strata_cols if c not in p.column_names]
    if missing:
        raise SelectionError(f"select.stratify={stratify!r}: {missing} not a column of the pool ({p.column_names})")
    if method in ("topk", "randk") and strata_cols:
        select_stratified(p, method, int(k), int(seed), columns, dedupe, exclude, batch_size, result,
                          strata_cols)
    elif method in ("topk", "randk"):
        select_bounded(p, method, int(k), int(seed), columns, dedupe, exclude, batch_size, result)
        if len(result.ids) < int(k) and not allow_fewer:
            raise SelectionError(
                f"k={k} but only {len(result.ids)} of the {p.num_rows} candidates are selectable "
                f"({result.n_overlap} overlap D_gen, {result.n_duplicates} duplicates, {result.n_unscored} "
                "unscored): lower k or pass select.allow_fewer=true"
            )
    else:
        select_unbounded(p, method, tau, columns, dedupe, exclude, batch_size, result)
    return result


def select_ids(pool: Any, method: str, *args: Any, **kwargs: Any) -> list[str]:
    """The ids :func:`select` keeps (same arguments), in its output order."""
    return select(pool, method, *args, **kwargs).ids


__all__ = [
    "METHODS",
    "TAU_RANGE",
    "SelectionResult",
    "check_settings",
    "select",
    "select_ids",
]
