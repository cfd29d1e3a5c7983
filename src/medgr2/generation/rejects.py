"""The rejects file: one JSON line per request that produced no kept record, and why.

Next to the pool's ``manifest.json``, ``rejects.jsonl`` lists every request that was answered but rejected
(``kind: "rejected"``: a blocked prompt or answer, a cut answer, invalid JSON, a bad item, ...) or that
failed for good (``kind: "failed"``: an API error no retry fixes, e.g. a 400 for this request's payload)::

    {"id": "gen-…", "source_id": "synth-00017", "modality": "CT", "question_type": "Modality Recognition",
     "reason": "safety", "kind": "rejected", "detail": "prompt blocked (promptFeedback.blockReason=SAFETY)"}

Each shard keeps its own ``rejects-<shard>-r<revision>.jsonl`` (named in the manifest, written before the
manifest that names it, like the Parquet shards), so a killed run never leaves a half-counted file; the
combined ``rejects.jsonl`` is rewritten from them at the end of every run. :func:`modality_table` is the
per-modality × reason summary the stage logs: a modality the safety filter blocks more often shows up
there, instead of silently thinning the pool.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medgr2.data.schema import RecordError, canonical_modality
from medgr2.generation.backends import GenRequest
from medgr2.utils.io import atomic_write_text

REJECTS_NAME = "rejects.jsonl"
REJECTS_GLOB = "rejects-*.jsonl"


def modality_of(source: Mapping[str, Any]) -> str:
    """The canonical modality of a source record, ``unknown`` when its string is not recognised."""
    try:
        return canonical_modality(str(source.get("modality", "")))
    except RecordError:
        return "unknown"


def reject_row(req: GenRequest, reason: str, kind: str, detail: str = "") -> dict[str, Any]:
    """The rejects-file line of ``req`` (``kind`` = ``rejected`` or ``failed``); ``detail`` is clipped."""
    return {
        "id": req.key,
        "source_id": str(req.source.get("id", "")),
        "modality": modality_of(req.source),
        "question_type": req.question_type,
        "reason": reason,
        "kind": kind,
        "detail": detail[:300],
    }


def shard_rejects_name(shard_index: int, revision: int) -> str:
    """``rejects-00003-r1.jsonl``: a new name per revision, like the shard files."""
    return f"rejects-{shard_index:05d}-r{revision}.jsonl"


def write_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows as JSON lines, atomically."""
    atomic_write_text(path, "".join(json.dumps(dict(r), sort_keys=True, ensure_ascii=False) + "\n" for r in rows))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines rejects file (``[]`` when it does not exist)."""
    if not Path(path).exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def by_modality(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """``{modality: {reason: count}}`` over rejects rows (modalities and reasons sorted)."""
    table: dict[str, Counter] = {}
    for row in rows:
        table.setdefault(str(row["modality"]), Counter())[str(row["reason"])] += 1
    return {m: dict(sorted(table[m].items())) for m in sorted(table)}


def modality_table(rejects: Mapping[str, Mapping[str, int]], requested: Mapping[str, int]) -> str:
    """A plain-text table: one line per modality with requests, rejects (share) and counts by reason."""
    reasons = sorted({r for counts in rejects.values() for r in counts})
    head = ["modality", "requested", "rejected", "share", *reasons]
    lines = [head]
    for modality in sorted(set(requested) | set(rejects)):
        counts = rejects.get(modality, {})
        n, bad = int(requested.get(modality, 0)), sum(counts.values())
        share = f"{100.0 * bad / n:.1f}%" if n else "-"
        lines.append([modality, str(n), str(bad), share, *[str(counts.get(r, 0)) for r in reasons]])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines)
