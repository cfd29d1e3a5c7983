"""Train/test image leakage: images that a split's train side and test side share, by path and by content.

Med-R1's OmniMedVQA splits are split by question, not by image, so an image can be asked about in training
and again at test time (1,836 images in the modality tree). :func:`leakage_report` counts such images;
:func:`image_disjoint` removes the training questions about them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["TEST_SIDE", "TRAIN_SIDE", "Leakage", "content_hash", "image_disjoint", "leakage_report"]

TRAIN_SIDE: tuple[str, ...] = ("train",)
TEST_SIDE: tuple[str, ...] = ("test",)
_CHUNK = 1 << 20


def content_hash(path: str | Path, cache: dict[str, str | None] | None = None) -> str | None:
    """SHA-256 of an image file's bytes (None when it cannot be read); ``cache`` keeps one per path."""
    key = str(path)
    if cache is not None and key in cache:
        return cache[key]
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
        digest: str | None = h.hexdigest()
    except OSError:
        digest = None
    if cache is not None:
        cache[key] = digest
    return digest


@dataclass(frozen=True)
class Leakage:
    """Images shared by the train side and the test side of a split.

    Attributes:
        train_images, test_images: distinct image paths on each side.
        shared_by_path: image paths on both sides.
        shared_by_content: distinct image contents (SHA-256 of the file) on both sides; counts the same picture
            stored under two paths too, so it is at least ``shared_by_path``.
        train_questions, test_questions: records on each side whose image (path or content) is shared.
        examples: a few shared image paths, for the report.
    """

    train_images: int
    test_images: int
    shared_by_path: int
    shared_by_content: int
    train_questions: int
    test_questions: int
    examples: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-able dict (``examples`` as a list)."""
        d = asdict(self)
        d["examples"] = list(self.examples)
        return d

    def metrics(self, prefix: str = "data/leakage/") -> dict[str, float]:
        """The counts as MLflow metrics."""
        return {f"{prefix}{k}": float(v) for k, v in self.as_dict().items() if k != "examples"}


def _image(rec: Mapping[str, Any]) -> str:
    return str(rec["image"])


def _shared(train: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]],
            by_content: bool, cache: dict[str, str | None]) -> tuple[set[str], set[str]]:
    """(train-side image paths shared with the test side, test-side ones), by path and optionally by content."""
    tr_paths, te_paths = {_image(r) for r in train}, {_image(r) for r in test}
    tr_shared, te_shared = tr_paths & te_paths, tr_paths & te_paths
    if by_content:
        te_hash: dict[str, set[str]] = {}
        for p in te_paths:
            h = content_hash(p, cache)
            if h is not None:
                te_hash.setdefault(h, set()).add(p)
        for p in tr_paths:
            h = content_hash(p, cache)
            if h is not None and h in te_hash:
                tr_shared.add(p)
                te_shared |= te_hash[h]
    return tr_shared, te_shared


def leakage_report(records: Iterable[Mapping[str, Any]], *, train: Sequence[str] = TRAIN_SIDE,
                   test: Sequence[str] = TEST_SIDE, by_content: bool = True, max_examples: int = 5) -> Leakage:
    """Count the images shared by records whose ``split`` is in ``train`` and those whose ``split`` is in
    ``test``; ``record["image"]`` is a path (content hashing reads each file once)."""
    rows = list(records)
    tr = [r for r in rows if r.get("split") in train]
    te = [r for r in rows if r.get("split") in test]
    cache: dict[str, str | None] = {}
    tr_shared, te_shared = _shared(tr, te, by_content, cache)
    by_path = {_image(r) for r in tr} & {_image(r) for r in te}
    if by_content:
        tr_h = {content_hash(_image(r), cache) for r in tr} - {None}
        te_h = {content_hash(_image(r), cache) for r in te} - {None}
        n_content = len(tr_h & te_h)
    else:
        n_content = len(by_path)
    return Leakage(
        train_images=len({_image(r) for r in tr}),
        test_images=len({_image(r) for r in te}),
        shared_by_path=len(by_path),
        shared_by_content=n_content,
        train_questions=sum(_image(r) in tr_shared for r in tr),
        test_questions=sum(_image(r) in te_shared for r in te),
        examples=tuple(sorted(tr_shared)[:max_examples]),
    )


def image_disjoint(records: Sequence[Mapping[str, Any]], *, train: Sequence[str] = TRAIN_SIDE,
                   test: Sequence[str] = TEST_SIDE, by_content: bool = True) -> tuple[list[Mapping[str, Any]], int]:
    """``(records without the train-side questions whose image is also on the test side, how many removed)``.

    The test side is never touched: removing test questions would change the benchmark.
    """
    tr = [r for r in records if r.get("split") in train]
    te = [r for r in records if r.get("split") in test]
    tr_shared, _ = _shared(tr, te, by_content, {})
    kept = [r for r in records if not (r.get("split") in train and _image(r) in tr_shared)]
    return kept, len(records) - len(kept)
