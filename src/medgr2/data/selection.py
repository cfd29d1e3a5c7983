# Over ~450 lines: its split by responsibility is open work of issue 17 (see docs/architecture.md); behaviour is tested as it is.
"""Streaming selection of scored candidates (paper Algorithm 1, lines 5–9): threshold τ, TopK, RandK, all.

The candidate pool can be large (the issue's target is 200,000 scored candidates and more), so selection
never loads it: it reads only the columns a method needs (``id`` and ``score``; ``image`` and ``question``
when deduplicating) in Arrow batches, and keeps

* TopK: a bounded heap of the ``k`` best ``(score, id)`` so far — memory O(k), not O(pool);
* RandK: the ``k`` smallest ``hash(seed, id)`` — a seeded, order-independent uniform sample without
  replacement, also in O(k) (unlike a shuffled index it does not depend on how the pool is sharded);
* threshold / all: the kept ids (the output itself is what grows).

Dedupe (``allow_overlap=False``) drops candidates whose :func:`dedupe_key` (image + normalised question) is
in ``exclude_keys`` (the items of the existing D_gen) and keeps one candidate per key within the pool: the
one with the higher score (ties: smaller id). For TopK/RandK this stays O(k) because a key evicted from the
heap can only come back with a better candidate (see :func:`_select_bounded`).

Ordering of the returned ids: TopK best first; RandK in hash order; threshold / all in pool order.
A pool is a ``datasets.Dataset``, a folder written by ``save_to_disk``, a generation ``out_dir``
(``manifest.json`` + Parquet shards), a Parquet file, a folder of Parquet files or a list of Parquet files.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medgr2.utils.hashing import image_key

METHODS: tuple[str, ...] = ("threshold", "topk", "randk", "all")
#: The reward model's grade scale (hallucinated −6 … original 10): a τ outside it selects all or nothing.
TAU_RANGE: tuple[float, float] = (-6.0, 10.0)
DEFAULT_BATCH_SIZE = 8192
SCORE_HINT = "run stage=score first (or pass stage.pool=<a scored dataset>)"


class SelectionError(ValueError):
    """Invalid selection settings or a pool that cannot be selected from (the message says what to do)."""


# ---------------------------------------------------------------------------------------------- keys


_WS = re.compile(r"\s+")


def normalise_question(question: str | None) -> str:
    """Lower-case, punctuation removed, whitespace collapsed: "What's  the organ?" -> "whats the organ"."""
    text = unicodedata.normalize("NFKC", str(question or "")).lower()
    # Unicode-aware: every character of a punctuation category goes, so "?" and "？" compare equal.
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return _WS.sub(" ", text).strip()


def dedupe_key(record: Any) -> str:
    """sha1 of (image identity, normalised question): two candidates with the same key ask the same
    question about the same image, whatever their ids, option order or capitalisation."""
    blob = image_key(record.get("image")) + "\n" + normalise_question(record.get("question"))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- pools


class _Pool:
    """Uniform, batched, column-projected read access to a pool (``datasets`` or Parquet)."""

    column_names: list[str]
    num_rows: int

    def iter_batches(self, columns: Sequence[str], batch_size: int) -> Iterator[pa.Table | pa.RecordBatch]:
        raise NotImplementedError

    def identity(self) -> Any:
        """Something that changes when the pool's content does (for cache keys)."""
        raise NotImplementedError


class _DatasetPool(_Pool):
    def __init__(self, ds: datasets.Dataset, path: str | None = None):
        self.ds = ds
        self.path = path
        self.column_names = list(ds.column_names)
        self.num_rows = len(ds)
        self.features = ds.features

    def iter_batches(self, columns: Sequence[str], batch_size: int) -> Iterator[pa.Table]:
        # Arrow format: no Python decoding (images stay {"bytes", "path"} structs), and a memory-mapped
        # dataset only pages in the selected columns' buffers.
        yield from self.ds.select_columns(list(columns)).with_format("arrow").iter(batch_size=batch_size)

    def identity(self) -> Any:
        return {"path": self.path, "fingerprint": getattr(self.ds, "_fingerprint", None), "rows": self.num_rows}


class _ParquetPool(_Pool):
    def __init__(self, files: Sequence[Path]):
        if not files:
            raise SelectionError("the pool has no Parquet files")
        self.files = [Path(f) for f in files]
        metas = [pq.ParquetFile(f) for f in self.files]
        self.schema = metas[0].schema_arrow
        self.column_names = list(self.schema.names)
        self.num_rows = sum(m.metadata.num_rows for m in metas)
        try:
            self.features = datasets.Features.from_arrow_schema(self.schema)
        except Exception:  # a plain Parquet file without HF metadata: infer from Arrow types
            self.features = None

    def iter_batches(self, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        for f in self.files:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=list(columns))

    def identity(self) -> Any:
        return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in self.files]


def open_pool(pool: Any) -> _Pool:
    """Wrap any supported pool (see the module docstring) for batched reading."""
    if isinstance(pool, _Pool):
        return pool
    if isinstance(pool, datasets.Dataset):
        return _DatasetPool(pool)
    if isinstance(pool, str | Path):
        path = Path(pool)
        if not path.exists():
            raise SelectionError(f"pool {path} does not exist; {SCORE_HINT}")
        if path.is_file():
            return _ParquetPool([path])
        manifest = path / "manifest.json"
        if manifest.exists():  # a generation out_dir: the shards its manifest names, in plan order
            shards = json.loads(manifest.read_text())["shards"]
            return _ParquetPool([path / shards[k]["file"] for k in sorted(shards, key=int)])
        if (path / "state.json").exists() or (path / "dataset_info.json").exists():
            return _DatasetPool(datasets.load_from_disk(str(path)), str(path.resolve()))
        files = sorted(path.glob("*.parquet"))
        if files:
            return _ParquetPool(files)
        raise SelectionError(
            f"{path} is neither a saved dataset, a generation out_dir nor a folder of Parquet files"
        )
    if isinstance(pool, Sequence) and all(isinstance(p, str | Path) for p in pool):
        return _ParquetPool([Path(p) for p in pool])
    raise TypeError(f"unsupported pool type {type(pool).__name__}")


# ---------------------------------------------------------------------------------------------- selection


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


class _Entry:
    """A heap entry; ``rank`` orders candidates, smaller is better. The heap's root is the WORST kept."""

    __slots__ = ("alive", "id", "key", "pos", "rank", "score")

    def __init__(self, rank: tuple, id_: str, key: str | None, pos: int, score: float | None):
        self.rank, self.id, self.key, self.pos, self.score, self.alive = rank, id_, key, pos, score, True

    def __lt__(self, other: _Entry) -> bool:  # heapq is a min-heap: invert to keep the worst on top
        return self.rank > other.rank


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


def _batches(pool: _Pool, columns: Sequence[str], batch_size: int) -> Iterator[_Batch]:
    pos = 0
    for batch in pool.iter_batches(columns, batch_size):
        yield _Batch(pos, batch)
        pos += batch.num_rows


def _keys(b: _Batch, idx: np.ndarray) -> list[str]:
    return [dedupe_key({"image": im, "question": q}) for im, q in zip(b.take("image", idx), b.take("question", idx),
                                                                       strict=True)]


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
    """Select from ``pool`` with ``method``; see :func:`select_ids` for the arguments. ``stratify``: a column
    (e.g. ``question_type``), or several (``[question_type, answer_text]``: their value combinations), over
    whose values TopK / RandK split ``k`` evenly (:func:`stratum_quotas`)."""
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
        _select_stratified(p, method, int(k), int(seed), columns, dedupe, exclude, batch_size, result,
                           strata_cols)
    elif method in ("topk", "randk"):
        _select_bounded(p, method, int(k), int(seed), columns, dedupe, exclude, batch_size, result)
        if len(result.ids) < int(k) and not allow_fewer:
            raise SelectionError(
                f"k={k} but only {len(result.ids)} of the {p.num_rows} candidates are selectable "
                f"({result.n_overlap} overlap D_gen, {result.n_duplicates} duplicates, {result.n_unscored} "
                "unscored): lower k or pass select.allow_fewer=true"
            )
    else:
        _select_unbounded(p, method, tau, columns, dedupe, exclude, batch_size, result)
    return result


def select_ids(
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
) -> list[str]:
    """The ids selected from a scored candidate pool, streaming in ``batch_size`` rows.

    ``method``: ``topk`` (the ``k`` highest scores, ties by smaller id), ``randk`` (``k`` uniformly at
    random, deterministic per ``seed``), ``threshold`` (every candidate with score > ``tau``, strictly —
    Algorithm 1 line 5), ``all``. ``allow_overlap=False`` removes candidates whose :func:`dedupe_key` is in
    ``exclude_keys`` (D_gen's keys, see :func:`pool_dedupe_keys`) and duplicates within the pool (the
    higher score stays). ``k`` larger than the pool, or than what is left after dedupe, raises
    :class:`SelectionError` unless ``allow_fewer``. Null/NaN scores are never selected by topk/threshold.
    """
    return select(
        pool, method, k, tau, seed, exclude_keys,
        allow_overlap=allow_overlap, allow_fewer=allow_fewer, batch_size=batch_size,
    ).ids


def _priority(seed: int, token: str) -> int:
    # 64 bits of sha1: a uniform random order that is a pure function of (seed, token).
    return int.from_bytes(hashlib.sha1(f"{seed}\x1f{token}".encode()).digest()[:8], "big")


def _select_bounded(
    p: _Pool, method: str, k: int, seed: int, columns: Sequence[str], dedupe: bool,
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
        ids = b.take("id", idx)
        keys = _keys(b, idx) if dedupe else [None] * len(idx)
        for i, rid, key in zip(idx.tolist(), ids, keys, strict=True):
            rid = str(rid)
            score = None if scores is None or math.isnan(scores[i]) else float(scores[i])
            if key is not None and key in exclude:
                result.n_overlap += 1
                continue
            s = -math.inf if score is None else score
            rank = (-s, rid) if topk else (_priority(seed, key if dedupe else rid), -s, rid)
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
    result.ids = [e.id for e in kept]
    result.positions = [e.pos for e in kept]
    result.scores = [e.score for e in kept]


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


def _select_stratified(
    p: _Pool, method: str, k: int, seed: int, columns: Sequence[str], dedupe: bool,
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
        _select_bounded(p, method, quota, seed, [*columns, *stratify], dedupe, exclude, batch_size, part,
                        stratum=(stratify, name))
        for rid, pos, score in zip(part.ids, part.positions, part.scores, strict=True):
            s_ = -math.inf if score is None else score
            rank = (-s_, rid) if topk else (_priority(seed, rid), rid)
            kept.append((rank, rid, pos, score))
        result.n_overlap += part.n_overlap
        result.n_duplicates += part.n_duplicates
        result.n_unscored += part.n_unscored
    kept.sort(key=lambda e: e[0])
    result.ids = [e[1] for e in kept]
    result.positions = [e[2] for e in kept]
    result.scores = [e[3] for e in kept]


def _select_unbounded(
    p: _Pool, method: str, tau: float | None, columns: Sequence[str], dedupe: bool,
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
        ids = b.take("id", idx)
        keys = _keys(b, idx) if dedupe else [None] * len(idx)
        for i, rid, key in zip(idx.tolist(), ids, keys, strict=True):
            rid = str(rid)
            pos = b.start + i
            score = None if scores is None or math.isnan(scores[i]) else float(scores[i])
            if key is None:
                ids_out.append((pos, rid, score))
                continue
            if key in exclude:
                result.n_overlap += 1
                continue
            rank = (-(-math.inf if score is None else score), rid)
            cur = best.get(key)
            if cur is not None:
                result.n_duplicates += 1
                if rank >= cur[0]:
                    continue
            best[key] = (rank, pos, rid, score)
    if dedupe:
        ids_out = sorted((pos, rid, score) for _, pos, rid, score in best.values())
    result.ids = [r for _, r, _ in ids_out]
    result.positions = [pos for pos, _, _ in ids_out]
    result.scores = [s for _, _, s in ids_out]


def pool_dedupe_keys(pool: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> set[str]:
    """The :func:`dedupe_key` of every record of a pool (e.g. the existing D_gen), streaming."""
    p = open_pool(pool)
    lacking = [c for c in ("image", "question") if c not in p.column_names]
    if lacking:
        raise SelectionError(f"cannot compute dedupe keys: the dataset has no {lacking} column(s)")
    keys: set[str] = set()
    for batch in p.iter_batches(["image", "question"], batch_size):
        images, questions = batch.column("image").to_pylist(), batch.column("question").to_pylist()
        keys.update(dedupe_key({"image": im, "question": q}) for im, q in zip(images, questions, strict=True))
    return keys


# ---------------------------------------------------------------------------------------------- writing


def save_rows(
    pool: Any,
    out_dir: str | Path,
    positions: Sequence[int] | None = None,
    batch_size: int = 1024,
    extra_json: Mapping[str, Any] | None = None,
) -> Path:
    """Save the rows of ``pool`` at ``positions`` (in that order; None: all rows) as a ``save_to_disk``
    folder at ``out_dir``, atomically, without loading the pool into memory. ``extra_json`` files
    (name -> object) are written into the folder before it is renamed into place, so a folder that
    exists always has its metadata.

    A ``datasets`` pool is written through ``Dataset.select`` (an indices mapping; ``save_to_disk`` then
    copies in batches). A Parquet pool is streamed through an Arrow file holding only the wanted rows,
    which ``save_to_disk`` then copies into place in the requested order.
    """
    from medgr2.utils.io import atomic_dir

    p = open_pool(pool)
    out = Path(out_dir)
    if isinstance(p, _DatasetPool):
        ds = p.ds if positions is None else p.ds.select(list(positions))
        with atomic_dir(out) as tmp:
            ds.save_to_disk(str(tmp), **_shards(ds))
            _write_extra(tmp, extra_json)
        return out
    assert isinstance(p, _ParquetPool)
    wanted = None if positions is None else np.asarray(sorted(set(positions)), dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.rows-", dir=out.parent))
    try:
        from datasets.arrow_writer import ArrowWriter

        rows_file = scratch / "rows.arrow"
        writer = ArrowWriter(features=p.features, path=str(rows_file), schema=None if p.features else p.schema)
        start = 0
        for batch in p.iter_batches(p.column_names, batch_size):
            table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
            if wanted is not None:
                lo, hi = np.searchsorted(wanted, [start, start + table.num_rows])
                table = table.take(pa.array(wanted[lo:hi] - start)) if hi > lo else table.slice(0, 0)
            if table.num_rows:
                writer.write_table(table)
            start += batch.num_rows
        writer.finalize()
        ds = datasets.Dataset.from_file(str(rows_file))
        if positions is not None:
            # Rows were written in pool order; put them in the requested (e.g. best-first) order.
            where = {int(pos): n for n, pos in enumerate(wanted.tolist())}
            ds = ds.select([where[int(pos)] for pos in positions])
        with atomic_dir(out) as tmp:
            ds.save_to_disk(str(tmp), **_shards(ds))
            _write_extra(tmp, extra_json)
        del ds
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def _shards(ds: datasets.Dataset) -> dict[str, int]:
    """``save_to_disk`` arguments: an empty dataset needs one explicit shard, else datasets writes no data
    file and ``load_from_disk`` fails on it instead of giving 0 rows."""
    return {} if len(ds) else {"num_shards": 1}


def _write_extra(folder: Path, extra_json: Mapping[str, Any] | None) -> None:
    for name, obj in (extra_json or {}).items():
        (folder / name).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def pool_identity(pool: Any) -> Any:
    """A JSON-able value that changes with the pool's content (for cache keys)."""
    return open_pool(pool).identity()


__all__ = [
    "METHODS",
    "SCORE_HINT",
    "TAU_RANGE",
    "SelectionError",
    "SelectionResult",
    "check_settings",
    "dedupe_key",
    "image_key",
    "normalise_question",
    "open_pool",
    "pool_dedupe_keys",
    "pool_identity",
    "save_rows",
    "select",
    "select_ids",
]
