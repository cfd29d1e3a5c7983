"""Batched, column-projected read access to a candidate pool, whatever its on-disk form.

The pool can be large (the target is 200,000 scored candidates and more), so nothing here loads it: readers
yield Arrow batches of only the columns asked for. A pool is a ``datasets.Dataset``, a folder written by
``save_to_disk``, a generation ``out_dir`` (``manifest.json`` + Parquet shards), a Parquet file, a folder of
Parquet files or a list of Parquet files; :func:`open_pool` tells them apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_BATCH_SIZE = 8192
SCORE_HINT = "run stage=score first (or pass stage.pool=<a scored dataset>)"


class SelectionError(ValueError):
    """Invalid selection settings or a pool that cannot be selected from (the message says what to do)."""


class Pool:
    """Uniform, batched, column-projected read access to a pool (``datasets`` or Parquet)."""

    column_names: list[str]
    num_rows: int

    def iter_batches(self, columns: Sequence[str], batch_size: int) -> Iterator[pa.Table | pa.RecordBatch]:
        """The pool's rows in order, ``batch_size`` at a time, with only ``columns``."""
        raise NotImplementedError

    def identity(self) -> Any:
        """Something that changes when the pool's content does (for cache keys)."""
        raise NotImplementedError


class DatasetPool(Pool):
    """A ``datasets.Dataset`` (in memory or memory-mapped from a ``save_to_disk`` folder at ``path``)."""

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


class ParquetPool(Pool):
    """Parquet files read one after the other, in the order given."""

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


def open_pool(pool: Any) -> Pool:
    """Wrap any supported pool (see the module docstring) for batched reading."""
    if isinstance(pool, Pool):
        return pool
    if isinstance(pool, datasets.Dataset):
        return DatasetPool(pool)
    if isinstance(pool, str | Path):
        path = Path(pool)
        if not path.exists():
            raise SelectionError(f"pool {path} does not exist; {SCORE_HINT}")
        if path.is_file():
            return ParquetPool([path])
        manifest = path / "manifest.json"
        if manifest.exists():  # a generation out_dir: the shards its manifest names, in plan order
            shards = json.loads(manifest.read_text())["shards"]
            return ParquetPool([path / shards[k]["file"] for k in sorted(shards, key=int)])
        if (path / "state.json").exists() or (path / "dataset_info.json").exists():
            return DatasetPool(datasets.load_from_disk(str(path)), str(path.resolve()))
        files = sorted(path.glob("*.parquet"))
        if files:
            return ParquetPool(files)
        raise SelectionError(
            f"{path} is neither a saved dataset, a generation out_dir nor a folder of Parquet files"
        )
    if isinstance(pool, Sequence) and all(isinstance(p, str | Path) for p in pool):
        return ParquetPool([Path(p) for p in pool])
    raise TypeError(f"unsupported pool type {type(pool).__name__}")


def pool_identity(pool: Any) -> Any:
    """A JSON-able value that changes with the pool's content (for cache keys)."""
    return open_pool(pool).identity()


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "SCORE_HINT",
    "DatasetPool",
    "ParquetPool",
    "Pool",
    "SelectionError",
    "open_pool",
    "pool_identity",
]
