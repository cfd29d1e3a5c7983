"""Write chosen rows of a pool as a ``save_to_disk`` folder, atomically and without loading the pool.

Selection writes D_gen with it (the selected rows, best first) and generation its finished dataset.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from medgr2.data.pools import DatasetPool, ParquetPool, open_pool


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
    p = open_pool(pool)
    out = Path(out_dir)
    if isinstance(p, DatasetPool):
        _save(p.ds if positions is None else p.ds.select(list(positions)), out, extra_json)
        return out
    assert isinstance(p, ParquetPool)
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
        _save(ds, out, extra_json)
        del ds
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def _save(ds: datasets.Dataset, out: Path, extra_json: Mapping[str, Any] | None) -> None:
    """``ds`` and the ``extra_json`` files into a temporary folder, renamed into place as ``out``."""
    from medgr2.utils.io import atomic_dir

    with atomic_dir(out) as tmp:
        # An empty dataset needs one explicit shard, else datasets writes no data file and
        # ``load_from_disk`` fails on it instead of giving 0 rows.
        ds.save_to_disk(str(tmp), **({} if len(ds) else {"num_shards": 1}))
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


__all__ = ["save_rows"]
