"""Crash-safe storage of generated candidates: Parquet shards + one JSON manifest.

Layout of an ``out_dir``::

    manifest.json              the commit point: config fingerprint, per-shard file, counts, pending keys
    shard-00000-r0.parquet     kept records of shard 0 (revision 0), schema.FEATURES columns
    shard-00001-r1.parquet     shard 1 after one retry of its pending requests (revision 1)
    rejects-00001-r1.jsonl     shard 1's rejected and failed requests, with their reasons
    rejects.jsonl              all of them (rewritten from the shard files at the end of every run)

Every file is written under a temporary name and ``os.replace``d into place (atomic on POSIX), and a shard
only counts once the manifest that names it has been replaced in. A process killed at any point therefore
leaves either the old state or the new one, never a half-written shard: files the manifest does not name
are leftovers and are ignored (and cleaned up on the next commit).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from medgr2.data.schema import FEATURES, to_dataset
from medgr2.utils.io import atomic_write_json

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "medgr2.generation/1"


class GenerationConfigError(ValueError):
    """``out_dir`` holds a generation run made with a different configuration."""


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of ``out_dir``, or None if there is none yet."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as fh:
        manifest = json.load(fh)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise GenerationConfigError(
            f"{path} is not a medgr2 generation manifest (format {manifest.get('format')!r})"
        )
    return manifest


def new_manifest(
    fingerprint: str, config: Mapping[str, Any], n_requests: int, n_shards: int
) -> dict[str, Any]:
    """An empty manifest for a run plan."""
    return {
        "format": MANIFEST_FORMAT,
        "fingerprint": fingerprint,
        "config": dict(config),
        "n_requests": n_requests,
        "n_shards": n_shards,
        "shards": {},
        "created": time.time(),
    }


def check_manifest(
    manifest: Mapping[str, Any], fingerprint: str, config: Mapping[str, Any], out_dir: Path
) -> None:
    """Raise :class:`GenerationConfigError` when an existing run was made with another configuration."""
    if manifest.get("fingerprint") == fingerprint:
        return
    old = manifest.get("config") or {}
    changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
    raise GenerationConfigError(
        f"{out_dir} already holds a generation run with a different configuration "
        f"(fingerprint {manifest.get('fingerprint')} != {fingerprint}; changed: {', '.join(changed) or '?'}). "
        "Resuming would mix two runs: use a new out_dir, or delete this one to start over."
    )


def shard_file_name(shard_index: int, revision: int) -> str:
    """``shard-00003-r0.parquet``: the revision changes whenever a shard's pending requests are redone, so a
    new file never overwrites the one the committed manifest still names."""
    return f"shard-{shard_index:05d}-r{revision}.parquet"


def write_shard(out_dir: Path, name: str, records: Sequence[Mapping[str, Any]]) -> None:
    """Write records as a Parquet file with the canonical features (atomically)."""
    path = Path(out_dir) / name
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # The Arrow table of ``to_dataset`` carries the ``huggingface`` features metadata, so writing it with
    # pyarrow gives the same file as ``Dataset.to_parquet`` without its per-shard progress bar.
    pq.write_table(to_dataset(records).data.table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_shard_records(out_dir: Path, name: str) -> list[dict[str, Any]]:
    """The records of a shard file as dicts, images kept as encoded ``{"bytes", "path"}`` (no re-encoding)."""
    return pq.read_table(Path(out_dir) / name).to_pylist()


def commit_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace the manifest, then delete shard files it no longer names (older revisions,
    leftovers of killed runs)."""
    manifest["updated"] = time.time()
    atomic_write_json(Path(out_dir) / MANIFEST_NAME, manifest)
    named = {entry["file"] for entry in manifest["shards"].values()}
    named |= {entry["rejects_file"] for entry in manifest["shards"].values() if entry.get("rejects_file")}
    for pattern in ("shard-*.parquet", "rejects-*.jsonl"):
        for path in Path(out_dir).glob(pattern):
            if path.name not in named:
                path.unlink(missing_ok=True)
    # ``.manifest.json.*`` / ``.rejects*``: temporary files of utils.io.atomic_write_text left by a killed process.
    for path in [*Path(out_dir).glob(".*.tmp-*"), *Path(out_dir).glob(f".{MANIFEST_NAME}.*"),
                 *Path(out_dir).glob(".rejects*")]:
        # Temporary files of this process were all renamed; others are from killed processes.
        path.unlink(missing_ok=True)


def load_generated(out_dir: Path | str, require_complete: bool = False) -> datasets.Dataset:
    """All kept records of ``out_dir``, shard after shard in plan order, as one ``datasets.Dataset``.

    With ``require_complete`` a run with pending (failed or never attempted) requests raises instead.
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {out_dir}: nothing was generated there")
    shards = manifest["shards"]
    if require_complete:
        done = sum(1 for e in shards.values() if not e["pending"])
        if done < manifest["n_shards"]:
            raise RuntimeError(
                f"{out_dir}: {manifest['n_shards'] - done} shard(s) unfinished; rerun generation"
            )
    tables = [pq.read_table(out_dir / shards[k]["file"]) for k in sorted(shards, key=int)]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return to_dataset([])
    ds = datasets.Dataset(pa.concat_tables(tables))
    return ds if ds.features == FEATURES else ds.cast(FEATURES)
