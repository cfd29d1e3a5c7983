"""The streaming selection algorithms behind :func:`medgr2.data.selection.select`, each one pass over a pool.

Selection never loads the pool: it reads only the columns a method needs (``id`` and ``score``; ``image``
and ``question`` when deduplicating) in Arrow batches, and keeps

* TopK: a bounded heap of the ``k`` best ``(score, id)`` so far — memory O(k), not O(pool);
* RandK: the ``k`` smallest ``hash(seed, id)`` — a seeded, order-independent uniform sample without
  replacement, also in O(k) (unlike a shuffled index it does not depend on how the pool is sharded);
* stratified TopK / RandK: ``k`` split over the values of some columns, one bounded pass per stratum;
* threshold / all: the kept ids (the output itself is what grows).

Dedupe keeps one candidate per :func:`~medgr2.data.dedupe.dedupe_key` — the one with the higher score (ties:
smaller id) — and drops those whose key is in ``exclude`` (D_gen's). For TopK/RandK this stays O(k) because a
key evicted from the heap can only come back with a better candidate (see :func:`select_bounded`).

Each algorithm fills a :class:`SelectionResult`; its ids are in output order: TopK best first; RandK in hash
order; threshold / all in pool order.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from medgr2.data.dedupe import dedupe_key
from medgr2.data.pools import Pool


@dataclass
class SelectionResult:
    """What a selection kept and why the others were dropped.

    ``ids``/``positions``/``scores`` are in output order (see the module docstring). ``n_overlap``:
    candidates dropped because their key is in D_gen (among those that passed the score filter);
    ``n_duplicates``: in-pool duplicates dropped — exact for threshold/all, for TopK/RandK the duplicates
    that met a kept candidate (the others were out-ranked anyway); ``n_unscored``: rows with a null/NaN
    score (never selected by TopK/threshold).
    """

    method: str
    ids: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    n_pool: int = 0
    n_overlap: int = 0
    n_duplicates: int = 0
    n_unscored: int = 0

    def summary(self) -> dict[str, Any]:
        """Counts (no id lists) for logs and metrics."""
        out = {k: v for k, v in asdict(self).items() if k not in ("ids", "positions", "scores")}
        out["n_selected"] = len(self.ids)
        valid = [s for s in self.scores if s is not None and not math.isnan(s)]
        if valid:
            out.update(score_mean=sum(valid) / len(valid), score_min=min(valid), score_max=max(valid))
        return out

    def keep(self, kept: Sequence[tuple[Any, str, int, float | None]]) -> None:
        """Set ``ids``/``positions``/``scores`` from ``(…, id, position, score)`` tuples in output order."""
        self.ids = [e[1] for e in kept]
        self.positions = [e[2] for e in kept]
        self.scores = [e[3] for e in kept]


class _Entry:
    """A heap entry; ``rank`` orders candidates, smaller is better. The heap's root is the WORST kept."""

    __slots__ = ("alive", "id", "key", "pos", "rank", "score")

    def __init__(self, rank: tuple, id_: str, key: str | None, pos: int, score: float | None):
        self.rank, self.id, self.key, self.pos, self.score, self.alive = rank, id_, key, pos, score, True

    def __lt__(self, other: _Entry) -> bool:  # heapq is a min-heap: invert to keep the worst on top
        return self.rank > other.rank


class _Batch:
    """One Arrow batch: scores as float64 (NaN for nulls) up front, other columns converted to Python only
    for the rows a method still needs (``take``): TopK/threshold filter most rows out vectorised, so ids
    and — when deduplicating — image bytes of the discarded rows are never copied into Python objects."""

    def __init__(self, start: int, batch: pa.Table | pa.RecordBatch):
        self.start, self.batch, self.num_rows = start, batch, batch.num_rows
        names = batch.schema.names
        self.scores = (
            batch.column(names.index("score")).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            if "score" in names
            else None
        )

    def take(self, column: str, idx: np.ndarray) -> list[Any]:
        col = self.batch.column(self.batch.schema.names.index(column))
        return col.take(pa.array(idx, pa.int64())).to_pylist()

    def candidates(self, idx: np.ndarray, dedupe: bool) -> Iterator[tuple[int, str, str | None, float | None]]:
        """``(row in batch, id, dedupe key or None, score or None)`` of the rows ``idx``."""
        ids = self.take("id", idx)
        if dedupe:
            pairs = zip(self.take("image", idx), self.take("question", idx), strict=True)
            keys: list[str | None] = [dedupe_key({"image": im, "question": q}) for im, q in pairs]
        else:
            keys = [None] * len(idx)
        scores = self.scores
        for i, rid, key in zip(idx.tolist(), ids, keys, strict=True):
            score = None if scores is None or math.isnan(scores[i]) else float(scores[i])
            yield i, str(rid), key, score


def _batches(pool: Pool, columns: Sequence[str], batch_size: int) -> Iterator[_Batch]:
    pos = 0
    for batch in pool.iter_batches(columns, batch_size):
        yield _Batch(pos, batch)
        pos += batch.num_rows


def priority(seed: int, token: str) -> int:
    """RandK's order: 64 bits of sha1, a uniform random order that is a pure function of (seed, token)."""
    return int.from_bytes(hashlib.sha1(f"{seed}\x1f{token}".encode()).digest()[:8], "big")


def _score_rank(score: float | None, rid: str) -> tuple[float, str]:
    """TopK's order (smaller is better): higher score first, ties by smaller id; no score ranks last."""
    return (-(-math.inf if score is None else score), rid)


# ---------------------------------------------------------------------------------------------- TopK / RandK


def select_bounded(
    p: Pool, method: str, k: int, seed: int, columns: Sequence[str], dedupe: bool,
    exclude: set[str], batch_size: int, result: SelectionResult,
    stratum: tuple[Sequence[str], str] | None = None,
) -> None:
    """TopK / RandK with a heap of at most k live entries (+ lazily deleted ones, compacted).

    Why dedupe stays exact with O(k) memory: an entry leaves the heap only when k better entries are in
    it, and the heap's worst entry only improves afterwards. A later candidate with an evicted key is
    either worse than the evicted one (so worse than the current worst: correctly not admitted) or
    better (so it is that key's representative and competes normally). For RandK the priority is the
    hash of the *key* when deduping, so all duplicates share it and the higher score wins the tie.
    """
    heap: list[_Entry] = []
    live: dict[str, _Entry] = {}  # dedupe key -> its entry in the heap
    n_live = 0
    topk = method == "topk"

    def root() -> _Entry:
        while not heap[0].alive:
            heapq.heappop(heap)
        return heap[0]

    for b in _batches(p, columns, batch_size):
        scores = b.scores
        # Rows of other strata are not this pass's business (stratified selection: one pass per stratum).
        inside = _in_stratum(b, stratum)
        if topk:
            assert scores is not None
            valid = ~np.isnan(scores) & inside
            result.n_unscored += int((np.isnan(scores) & inside).sum())
            if n_live >= k:
                # Vectorised pre-filter: only rows at least as good as the current worst can enter.
                valid &= scores >= root().score
            idx = np.flatnonzero(valid)
        else:
            idx = np.flatnonzero(inside)
        for i, rid, key, score in b.candidates(idx, dedupe):
            if key is not None and key in exclude:
                result.n_overlap += 1
                continue
            s = -math.inf if score is None else score
            rank = (-s, rid) if topk else (priority(seed, key if dedupe else rid), -s, rid)
            entry = _Entry(rank, rid, key, b.start + i, score)
            if key is not None:
                cur = live.get(key)
                if cur is not None:
                    result.n_duplicates += 1
                    if entry.rank < cur.rank:
                        cur.alive = False
                        live[key] = entry
                        heapq.heappush(heap, entry)
                    continue
            if n_live < k:
                heapq.heappush(heap, entry)
                n_live += 1
            elif entry.rank < root().rank:
                worst = heapq.heapreplace(heap, entry)
                worst.alive = False
                if worst.key is not None:
                    del live[worst.key]
            else:
                continue
            if key is not None:
                live[key] = entry
            if len(heap) > 2 * k + 1024:  # drop lazily deleted entries so the heap stays O(k)
                heap[:] = [e for e in heap if e.alive]
                heapq.heapify(heap)
    kept = sorted((e for e in heap if e.alive), key=lambda e: e.rank)
    result.keep([(e.rank, e.id, e.pos, e.score) for e in kept])


# ---------------------------------------------------------------------------------------------- strata


def _stratum_keys(batch: pa.Table | pa.RecordBatch, columns: Sequence[str]) -> list[str]:
    """One key per row: the row's values in ``columns``, joined (the stratum it belongs to)."""
    values = [batch.column(batch.schema.names.index(c)).to_pylist() for c in columns]
    return ["\x1f".join(str(v) for v in row) for row in zip(*values, strict=True)]


def _in_stratum(b: _Batch, stratum: tuple[Sequence[str], str] | None) -> np.ndarray:
    """``(num_rows,)`` bool: the batch's rows whose stratum key (:func:`_stratum_keys` of the columns
    ``stratum[0]``) is ``stratum[1]``; every row when there is no stratum."""
    if stratum is None:
        return np.ones(b.num_rows, dtype=bool)
    return np.asarray([key == stratum[1] for key in _stratum_keys(b.batch, stratum[0])], dtype=bool)


def stratum_quotas(sizes: Mapping[str, int], k: int) -> dict[str, int]:
    """Split ``k`` over strata as evenly as their sizes allow (water-filling): a stratum smaller than its
    share gives all it has and the rest is shared by the others; leftovers go to the larger strata first.

    >>> stratum_quotas({"a": 10, "b": 1, "c": 10}, 9)
    {'a': 4, 'b': 1, 'c': 4}
    """
    quotas = {name: 0 for name in sizes}
    left, open_ = k, sorted(sizes, key=lambda n: (sizes[n], n))
    while left > 0 and open_:
        share = max(1, left // len(open_))
        for name in list(open_):
            take = min(share, sizes[name] - quotas[name], left)
            quotas[name] += take
            left -= take
            if quotas[name] >= sizes[name]:
                open_.remove(name)
            if left == 0:
                break
    return quotas


def select_stratified(
    p: Pool, method: str, k: int, seed: int, columns: Sequence[str], dedupe: bool,
    exclude: set[str], batch_size: int, result: SelectionResult, stratify: Sequence[str],
) -> None:
    """TopK / RandK with ``k`` split evenly over the values of column ``stratify`` (e.g. question type), so
    that the selection keeps the pool's mix instead of the reward model's preferences. One streaming pass
    per stratum (memory stays O(k)); output order: the merged ranking (best first for TopK)."""
    sizes: dict[str, int] = {}
    for batch in p.iter_batches(list(stratify), batch_size):
        for key in _stratum_keys(batch, stratify):
            sizes[key] = sizes.get(key, 0) + 1
    quotas = stratum_quotas(sizes, k)
    kept: list[tuple[tuple, str, int, float | None]] = []
    topk = method == "topk"
    for name, quota in sorted(quotas.items()):
        if quota == 0:
            continue
        part = SelectionResult(method=method, n_pool=result.n_pool)
        select_bounded(p, method, quota, seed, [*columns, *stratify], dedupe, exclude, batch_size, part,
                       stratum=(stratify, name))
        for rid, pos, score in zip(part.ids, part.positions, part.scores, strict=True):
            rank = _score_rank(score, rid) if topk else (priority(seed, rid), rid)
            kept.append((rank, rid, pos, score))
        result.n_overlap += part.n_overlap
        result.n_duplicates += part.n_duplicates
        result.n_unscored += part.n_unscored
    kept.sort(key=lambda e: e[0])
    result.keep(kept)


# ---------------------------------------------------------------------------------------------- threshold / all


def select_unbounded(
    p: Pool, method: str, tau: float | None, columns: Sequence[str], dedupe: bool,
    exclude: set[str], batch_size: int, result: SelectionResult,
) -> None:
    """Threshold / all: the output itself is O(kept), so a dict of kept keys costs nothing extra."""
    best: dict[str, tuple[tuple, int, str, float | None]] = {}  # key -> (rank, pos, id, score)
    ids_out: list[tuple[int, str, float | None]] = []
    for b in _batches(p, columns, batch_size):
        scores = b.scores
        if scores is not None:
            result.n_unscored += int(np.isnan(scores).sum())
        if method == "threshold":
            assert scores is not None
            with np.errstate(invalid="ignore"):
                idx = np.flatnonzero(scores > float(tau))  # strictly greater (Alg. 1 line 5); NaN fails
        else:
            idx = np.arange(b.num_rows)
        for i, rid, key, score in b.candidates(idx, dedupe):
            pos = b.start + i
            if key is None:
                ids_out.append((pos, rid, score))
                continue
            if key in exclude:
                result.n_overlap += 1
                continue
            rank = _score_rank(score, rid)
            cur = best.get(key)
            if cur is not None:
                result.n_duplicates += 1
                if rank >= cur[0]:
                    continue
            best[key] = (rank, pos, rid, score)
    if dedupe:
        ids_out = sorted((pos, rid, score) for _, pos, rid, score in best.values())
    result.keep([(None, rid, pos, score) for pos, rid, score in ids_out])
