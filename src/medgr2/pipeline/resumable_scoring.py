"""Resumable batched scoring of a dataset with R_φ (the work of ``stage=score``, :mod:`medgr2.pipeline.score`).

:func:`score_dataset` scores in chunks, each saved atomically next to the output, so a killed run resumes
where it stopped; :func:`model_id` is the cheap identity of an R_φ export its resume check (and the score
stage's output key) use.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

from medgr2.pipeline.stage import Artifact
from medgr2.utils.io import atomic_write_json

log = logging.getLogger(__name__)

SCORE_META = "score_meta.json"


def model_id(path: str | Path) -> dict[str, Any]:
    """Identify an R_φ export cheaply (path + size/mtime of its weight files), for resume checks."""
    path = Path(path).resolve()
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json", ".bin"))
    return {"path": str(path), "files": {p.name: [p.stat().st_size, int(p.stat().st_mtime)] for p in files}}


def score_dataset(ds: datasets.Dataset, scorer, output: str | Path, chunk_size: int = 512, batch_size: int = 32,
                  response_key: str = "response", progress: bool = True,
                  model_id: Mapping[str, Any] | None = None) -> datasets.Dataset:
    """Score every row of ``ds`` and save ``ds`` + a ``score`` column to ``output`` (atomically).

    Rows are scored ``chunk_size`` at a time; each chunk's scores are saved atomically to
    ``<output>.chunks/chunk-NNNNN.json`` and a rerun with the same input, model and chunking skips the
    chunks already there (a different input or model discards them). Each row's ``provenance`` JSON gains
    ``{"reward": {"score": s, "model": path}}``. An existing output with the same meta is returned as is.

    The output is an :class:`~medgr2.pipeline.stage.Artifact` keyed by the input, model, chunking, response
    column and instruction (its meta ``score_meta.json``); under DDP rank 0 scores and the other ranks wait.
    """
    output = Path(output)
    chunks_dir = output.with_name(output.name + ".chunks")
    model_id = dict(model_id or {"path": scorer.path})
    meta = {"input": ds._fingerprint, "n": len(ds), "model": model_id, "chunk_size": int(chunk_size),
            "response_key": response_key, "instruction": scorer.instruction}
    # Outputs written before the artifact meta recorded this key under "meta": they stay valid.
    scored = Artifact(output, meta, SCORE_META, legacy_key="meta")
    if scored.meta() is not None:
        log.info("already scored: %s", output)
        return datasets.load_from_disk(str(output))

    def build(tmp: Path) -> dict[str, Any]:
        # The chunks live beside the output, not in the temporary folder: a killed run resumes from them.
        scores = _score_chunks(ds, scorer, chunks_dir, meta, chunk_size, batch_size, response_key, progress)
        _with_scores(ds, scores, model_id.get("path")).save_to_disk(str(tmp))
        return {"n": len(scores), "mean_score": sum(scores) / len(scores) if scores else math.nan}

    scored.get_or_build(build)
    shutil.rmtree(chunks_dir, ignore_errors=True)
    return datasets.load_from_disk(str(output))


def _score_chunks(ds: datasets.Dataset, scorer, chunks_dir: Path, meta: Mapping[str, Any], chunk_size: int,
                  batch_size: int, response_key: str, progress: bool) -> list[float]:
    """Every row's score, from the chunk files in ``chunks_dir`` that match ``meta``, scoring the missing ones."""
    from tqdm.auto import tqdm

    if chunks_dir.exists():
        old = json.loads((chunks_dir / "meta.json").read_text()) if (chunks_dir / "meta.json").exists() else None
        if old != meta:
            log.warning("discarding stale score chunks in %s (different input, model or chunking)", chunks_dir)
            shutil.rmtree(chunks_dir)
    chunks_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(chunks_dir / "meta.json", meta)

    n = len(ds)
    starts = list(range(0, n, chunk_size))
    done = {s for s in starts if (chunks_dir / f"chunk-{s // chunk_size:05d}.json").exists()}
    n_done = sum(min(chunk_size, n - s) for s in done)
    bar = tqdm(total=n, initial=n_done, desc="R_phi scoring", unit="row", disable=not progress)
    try:
        for s in starts:
            if s in done:
                continue
            part = ds.select(range(s, min(n, s + chunk_size)))
            scores = scorer.score(part, batch_size=batch_size, response_key=response_key)
            atomic_write_json(chunks_dir / f"chunk-{s // chunk_size:05d}.json",
                              {"start": s, "end": s + len(part), "scores": scores})
            bar.update(len(part))
    finally:
        bar.close()
    all_scores: list[float] = []
    for s in starts:
        chunk = json.loads((chunks_dir / f"chunk-{s // chunk_size:05d}.json").read_text())
        if chunk["start"] != s or len(chunk["scores"]) != min(chunk_size, n - s):
            raise RuntimeError(f"corrupt score chunk {s} in {chunks_dir}: delete the folder and rerun")
        all_scores.extend(float(x) for x in chunk["scores"])
    return all_scores


def _with_scores(ds: datasets.Dataset, all_scores: list[float], model_path: str | None) -> datasets.Dataset:
    """``ds`` with a ``score`` column (last) and ``{"reward": {"score", "model"}}`` in each row's provenance."""
    columns = [c for c in ds.column_names if c != "score"]
    out = ds.remove_columns(["score"]) if "score" in ds.column_names else ds
    if "provenance" in columns:
        provs = []
        for prov, score in zip(out["provenance"], all_scores, strict=True):
            p = json.loads(prov or "{}")
            p["reward"] = {"score": score, "model": model_path}
            provs.append(json.dumps(p, sort_keys=True))
        out = out.remove_columns(["provenance"]).add_column("provenance", provs)
    out = out.add_column("score", all_scores).cast_column("score", datasets.Value("float32"))
    return out.select_columns([*columns, "score"])  # keep the input's column order, score last


__all__ = ["SCORE_META", "model_id", "score_dataset"]
