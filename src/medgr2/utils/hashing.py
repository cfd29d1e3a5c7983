"""Stable identities: the one hash of JSON-able parts (cache keys, generation ids, seeds) and the one
identity of a record's image (dedupe keys, donor checks). Both are stable across processes, unlike ``hash()``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

#: JSON separators of :func:`stable_hash`. The cache keys (``pipeline.common.fingerprint``) were always made
#: with ``json.dumps``'s default ``", "``/``": "``, the generation ids with the compact form: both are kept, so
#: existing caches and generation runs keep their keys.
COMPACT = (",", ":")
SPACED = (", ", ": ")


def stable_hash(*parts: Any, length: int = 16, separators: tuple[str, str] = COMPACT) -> str:
    """Hex sha256 (first ``length`` digits) of the JSON of ``parts`` (sorted keys, ``str`` for the rest)."""
    blob = json.dumps(list(parts), sort_keys=True, default=str, separators=separators)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def image_key(image: Any) -> str:
    """A stable identity of a record's image.

    Stored images (``{"bytes", "path"}`` as Arrow keeps them, or raw bytes) are identified by the sha1 of
    their encoded bytes, so the same picture copied into several datasets matches; images stored only as
    a path (no bytes) by the path; no image by ``"none"``. A decoded PIL image is identified by its pixels —
    such keys only match other PIL images, which is why the pipeline computes keys on the stored (undecoded)
    columns.
    """
    if image is None:
        return "none"
    if isinstance(image, dict):
        data = image.get("bytes")
        if data:
            return "sha1:" + hashlib.sha1(data).hexdigest()
        if image.get("path"):
            return "path:" + str(image["path"])
        return "none"
    if isinstance(image, bytes | bytearray | memoryview):
        return "sha1:" + hashlib.sha1(bytes(image)).hexdigest()
    if isinstance(image, str | Path):
        return "path:" + str(image)
    if hasattr(image, "tobytes") and hasattr(image, "mode"):  # PIL.Image
        h = hashlib.sha1(f"{image.mode}:{image.size}".encode())
        h.update(image.tobytes())
        return "pixels:" + h.hexdigest()
    raise TypeError(f"unsupported image value {type(image).__name__} for a dedupe key")


__all__ = ["COMPACT", "SPACED", "image_key", "stable_hash"]
