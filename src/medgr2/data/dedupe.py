"""Dedupe keys of candidates: two candidates with the same key ask the same question about the same image.

Selection with ``allow_overlap=False`` drops candidates whose key is already in D_gen
(:func:`pool_dedupe_keys` of it) and keeps one candidate per key within the pool.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

from medgr2.data.pools import DEFAULT_BATCH_SIZE, SelectionError, open_pool
from medgr2.utils.hashing import image_key

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


__all__ = ["dedupe_key", "normalise_question", "pool_dedupe_keys"]
