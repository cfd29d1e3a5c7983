"""OmniMedVQA loading plumbing shared by both layouts: the load result, JSON files, image checks."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

__all__ = ["MAX_EXAMPLES", "SOURCE", "Candidate", "ImageChecker", "LoadResult", "read_json_list", "text"]

log = logging.getLogger(__name__)

SOURCE = "omnimedvqa"
MAX_EXAMPLES = 5  # messages kept per skip reason: enough to diagnose, small enough to print

# A candidate: record fields (no image yet), "file item N (id X)" for messages, image path as given.
Candidate = tuple[dict[str, Any], str, str]


@dataclass
class LoadResult:
    """What :func:`load_omnimedvqa` produced.

    Attributes:
        records: schema records (``image`` is an absolute path string), validated.
        skipped: reason -> number of items that did not become records because they are unusable.
        examples: reason -> the first :data:`MAX_EXAMPLES` messages, each naming file and item.
        layout: the layout actually read (``"raw"`` or ``"medr1"``).
        filtered: reason (``split``/``modality``/``question_type``) -> items left out on purpose by
            the caller's filters; kept apart from ``skipped`` because they are not data problems.
        truncated: True when ``limit`` stopped the scan early (later items were not examined).
        warnings: reason -> number of files (or items) loaded despite a problem worth a look, e.g.
            ``non_utf8_json`` (a file decoded from a legacy 8-bit encoding); not skips: their items are
            in ``records`` or ``skipped`` like any other's.
            ``repeated_options`` counts kept items whose options repeat (up to case) although the answer
            is not one of the repeats; ``attribute_unknown`` counts Med-R1 items whose modality or question
            type could be found nowhere (marked ``"unknown"``, never guessed).
        warning_examples: reason -> the first :data:`MAX_EXAMPLES` warning messages (also logged).
        attributes: ``"<field> <- <source>"`` -> items whose ``field`` was set from ``source`` (Med-R1
            layout: ``file name``, ``<axis> tree`` (joined on image + problem), ``QA_information``,
            ``unknown``); empty for the raw layout, whose items carry both.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    layout: str = ""
    filtered: Counter[str] = field(default_factory=Counter)
    truncated: bool = False
    warnings: Counter[str] = field(default_factory=Counter)
    warning_examples: dict[str, list[str]] = field(default_factory=dict)
    attributes: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str, message: str) -> None:
        """Count one skipped item under ``reason`` and keep ``message`` if it is among the first few."""
        self.skipped[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(message)

    def warn(self, reason: str, message: str, count: int = 1) -> None:
        """Count ``count`` loaded-with-a-caveat files or items under ``reason``; keep and log ``message`` if
        it is among the first few (a warning on every one of 88 items would bury the log)."""
        self.warnings[reason] += count
        kept = self.warning_examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(message)
            log.warning("OmniMedVQA: %s", message)

    @property
    def n_skipped(self) -> int:
        """Total number of skipped items."""
        return sum(self.skipped.values())


class ImageChecker:
    """Checks image files once each (OmniMedVQA reuses an image across several questions)."""

    def __init__(self, verify: bool):
        self.verify = verify
        self._cache: dict[Path, tuple[str, str] | None] = {}

    def problem(self, path: Path) -> tuple[str, str] | None:
        """``(reason, detail)`` if the image cannot be used, else None."""
        if path not in self._cache:
            self._cache[path] = self._check(path)
        return self._cache[path]

    def _check(self, path: Path) -> tuple[str, str] | None:
        if not path.is_file():
            return "missing_image", f"image file not found: {path}"
        try:
            size = path.stat().st_size
        except OSError as e:
            return "unreadable_image", f"cannot stat image {path}: {e}"
        if size == 0:
            return "unreadable_image", f"image file is empty (0 bytes): {path}"
        try:
            with Image.open(path) as im:
                fmt = im.format
                if self.verify:
                    # verify() walks the file's structure without decoding pixels: cheap, and catches
                    # truncated or corrupt files that would only fail later inside a training step.
                    im.verify()
            if self.verify and fmt == "JPEG" and not _ends_with_jpeg_eoi(path):
                # PIL's verify() checks nothing for JPEG: a truncated file passes it and fails later, in a
                # training step. Files not ending in the end-of-image marker are decoded (at 1/8 scale).
                with Image.open(path) as im:
                    im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
                    im.load()
        except Image.DecompressionBombError as e:
            return "unreadable_image", f"image too large (decompression bomb guard): {path}: {e}"
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            return "unreadable_image", f"image cannot be read by PIL: {path}: {type(e).__name__}: {e}"
        return None


def _ends_with_jpeg_eoi(path: Path) -> bool:
    """True when the file ends with JPEG's end-of-image marker (trailing NUL padding allowed)."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64))
        tail = f.read().rstrip(b"\x00")
    return tail.endswith(b"\xff\xd9")



def _decode_json(raw: bytes) -> tuple[Any, str | None, UnicodeDecodeError | None]:
    """``(data, legacy encoding or None, the UTF-8 error)`` of a JSON file's bytes.

    ``json.loads`` of bytes reads UTF-8 (with or without a byte-order mark), UTF-16 and UTF-32. A file in none
    of them is almost always an 8-bit legacy encoding: Windows tools write cp1252 for European text, whose
    printable range is a superset of Latin-1's; the 5 byte values cp1252 leaves undefined fall back to Latin-1,
    which decodes every byte. JSON's structure (brackets, keys, numbers) is ASCII in all of them, so every item
    parses exactly; only non-ASCII characters in its strings depend on the guess. Raises
    :class:`json.JSONDecodeError` for text that is not JSON.
    """
    try:
        return json.loads(raw), None, None
    except UnicodeDecodeError as err:
        utf8_error = err
    for encoding in ("cp1252", "latin-1"):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        return json.loads(text), encoding, utf8_error
    raise AssertionError("unreachable: latin-1 decodes every byte")  # pragma: no cover


def _non_ascii_items(items: list[Any]) -> int:
    """Items holding a non-ASCII character anywhere (the ones an encoding guess can change)."""
    return sum(not json.dumps(item, ensure_ascii=False).isascii() for item in items)


def read_json_list(path: Path, rel: str, result: LoadResult) -> tuple[list[Any] | None, str | None]:
    """``(the JSON list in path, legacy encoding or None)``; ``(None, None)`` after counting ``malformed_json``
    once for the file.

    A file that is not UTF-8/16/32 is decoded as cp1252 (Latin-1 where cp1252 has no character, see
    :func:`_decode_json`) and its items are handled one by one like any other's, so its good items load; the
    file is counted once under :attr:`LoadResult.warnings` ``non_utf8_json`` with a message naming it, the
    encoding used and how many items hold non-ASCII text (which may be misread if the guess is wrong), and its
    records say ``provenance["encoding"]``.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        result.skip("malformed_json", f"{rel}: cannot be read ({e}); the whole file is skipped")
        return None, None
    try:
        data, encoding, utf8_error = _decode_json(raw)
    except json.JSONDecodeError as e:
        result.skip("malformed_json", f"{rel}: not valid JSON ({e}); the whole file is skipped")
        return None, None
    if not isinstance(data, list):
        result.skip(
            "malformed_json", f"{rel}: top level is {type(data).__name__}, expected a list; file skipped"
        )
        return None, None
    if encoding is not None:
        n_text = _non_ascii_items(data)
        result.warn(
            "non_utf8_json",
            f"{rel}: not UTF-8 ({utf8_error.reason} at byte {utf8_error.start}); decoded as {encoding}: "
            f"{len(data)} items read one by one, {n_text} of them with non-ASCII text that is right only if the "
            f"file really is {encoding} (re-save it as UTF-8 to be sure)",
        )
    return data, encoding


def text(value: Any) -> str:
    """Option / answer values as stripped text (a few raw options are numbers)."""
    if value is None:
        return ""
    return str(value).strip()

